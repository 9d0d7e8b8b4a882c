"""Claims: paired comparisons and verdicts on literal evaluation records and closeness metrics."""

from __future__ import annotations

import json

import pytest

from cotshape.core.errors import RecordError
from cotshape.evaluation.claims import (
    correctness,
    judge_run,
    judge_task,
    mixture_sets,
    paired,
    summary_entry,
)

N = 200
IDS = [f"p{i:03d}" for i in range(N)]


def acc(k: int, offset: int = 0) -> dict[str, bool]:
    """``k`` of the N problems right (problems offset .. offset+k-1, wrapping)."""
    right = {(offset + j) % N for j in range(k)}
    return {pid: i in right for i, pid in enumerate(IDS)}


def by_id(claims, cid):
    return next(c for c in claims if c["id"] == cid)


def closeness(h=1.2, g=0.8, w=0.9, spread=0.05):
    def entry(mean, diff=None):
        e = {"mean_loss": mean, "n_examples": 60}
        if diff is not None:
            e.update(minus_ref=diff, minus_ref_ci95=[diff - spread, diff + spread])
        return e

    return {"H": entry(h), "G": entry(g, h - g), "W": entry(w, h - w)}


def test_paired_needs_the_same_problems():
    with pytest.raises(RecordError, match="different test problems"):
        paired({"a": True}, {"b": True})


def test_correctness_refuses_bad_records():
    with pytest.raises(RecordError, match="record 2: problem 'a' appears twice"):
        correctness([{"problem_id": "a", "correct": True}, {"problem_id": "a", "correct": False}])
    with pytest.raises(RecordError, match="boolean correct"):
        correctness([{"problem_id": "a", "correct": "no"}])


def test_claim_holds_when_the_interval_excludes_the_alternative():
    # G right on 120 problems, H on the first 60 of them: G - H = +30 points, far beyond noise
    evals = {"base": acc(10), "H": acc(60), "G": acc(120), "W": acc(60), "P": acc(60)}
    claims, cmp = judge_task("t", evals, closeness(), [0.25], "G", margin=0.1, n_boot=2000)
    c2 = by_id(claims, "C2")
    assert c2["verdict"] == "holds"
    assert c2["evidence"]["diff"] == pytest.approx(0.3)
    assert c2["evidence"]["ci95"][0] > 0
    assert cmp["G"]["vs_base"]["diff"] == pytest.approx(0.55)
    assert by_id(claims, "C1")["verdict"] == "holds"  # both G and W below H with intervals above 0


def test_claim_contradicted_when_the_interval_excludes_the_claim():
    evals = {"base": acc(10), "H": acc(120), "G": acc(60), "W": acc(60), "P": acc(60)}
    claims, _ = judge_task("t", evals, closeness(h=0.8, g=1.2, w=1.1), [0.25], "G", margin=0.1, n_boot=2000)
    assert by_id(claims, "C2")["verdict"] == "contradicted"
    assert by_id(claims, "C3")["verdict"] == "contradicted"
    assert by_id(claims, "C1")["verdict"] == "contradicted"


def test_claim_inconclusive_on_a_tie():
    # same accuracy, different problems: the paired interval straddles 0
    evals = {"base": acc(10), "H": acc(60), "G": acc(60, offset=30), "W": acc(60), "P": acc(60)}
    claims, _ = judge_task("t", evals, closeness(), [0.25], "G", margin=0.1, n_boot=2000)
    c2 = by_id(claims, "C2")
    assert c2["verdict"] == "inconclusive"
    lo, hi = c2["evidence"]["ci95"]
    assert lo < 0 < hi
    # identical students: a tie, never "holds"
    assert by_id(claims, "C3")["verdict"] == "inconclusive"


def test_c5_equivalence_and_c6_trend():
    evals = {"base": acc(10), "H": acc(60), "G": acc(100), "W": acc(60), "P": acc(60),
             "mix-0.25": acc(100), "mix-0.5": acc(70), "mix-1.0": acc(20)}
    claims, _ = judge_task("t", evals, closeness(), [0.25, 0.5, 1.0], "G", margin=0.1, n_boot=2000)
    c5, c6 = by_id(claims, "C5"), by_id(claims, "C6")
    assert c5["verdict"] == "holds" and c5["evidence"]["diff"] == 0.0
    assert c6["verdict"] == "holds" and c6["evidence"]["diff"] < 0
    assert c6["evidence"]["sets"] == ["G", "mix-0.25", "mix-0.5", "mix-1.0"]
    # 25 % flawed costs 30 points: outside a 10-point margin, so C5 is contradicted
    evals["mix-0.25"] = acc(40)
    claims, _ = judge_task("t", evals, closeness(), [0.25, 0.5, 1.0], "G", margin=0.1, n_boot=2000)
    assert by_id(claims, "C5")["verdict"] == "contradicted"


def test_missing_sets_make_claims_inconclusive_with_a_reason():
    claims, _ = judge_task("t", {"base": acc(10), "H": acc(60), "G": None}, None, [0.25], "G", margin=0.1)
    c2 = by_id(claims, "C2")
    assert c2["verdict"] == "inconclusive" and "G" in c2["evidence"]["missing"]
    assert by_id(claims, "C1")["evidence"]["missing"]


def test_mixture_curve_starts_at_the_base_set():
    assert mixture_sets([1.0, 0.25], "G") == [(0.0, "G"), (0.25, "mix-0.25"), (1.0, "mix-1.0")]


def test_summary_entry_is_one_column_per_number():
    evm = {"base": {"accuracy": 0.05, "ci95": [0.03, 0.09], "n": 200},
           "H": {"accuracy": 0.3, "ci95": [0.24, 0.37], "n": 200}, "G": {"n": 0, "skipped": 1}}
    cmp = {"H": {"vs_base": {"diff": 0.25}}}
    s = summary_entry(evm, cmp, {"H": {"mean_loss": 1.1}}, {"H": {"step_accuracy": 1.0}},
                      {"teacher_accuracy": 0.2}, {"problems": 100, "with_both": 60, "compared": 60})
    assert s == {"teacher_acc": 0.2, "both_frac": 0.6, "n_test": 200,
                 "base": {"acc": 0.05, "ci": "[0.030, 0.090]"},
                 "H": {"acc": 0.3, "ci": "[0.240, 0.370]", "loss": 1.1, "step_acc": 1.0}}


def test_judge_run_reads_the_pipeline_layout(tmp_path):
    ev, met, sets = tmp_path / "eval", tmp_path / "metrics", tmp_path / "sets"
    for d in (ev, met / "eval", sets / "t"):
        d.mkdir(parents=True)
    for name, k in {"base": 10, "H": 60, "G": 120}.items():
        recs = [{"problem_id": pid, "correct": ok} for pid, ok in acc(k).items()]
        (ev / f"t-{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        (met / "eval" / f"t-{name}.json").write_text(json.dumps({"accuracy": k / N, "ci95": [0, 1], "n": N}))
    (sets / "t" / "G.jsonl").write_text(json.dumps({"problem_id": "p000", "completion": "3 + 4 = 8\n2 * 2 = 4"}) + "\n"
                                        + json.dumps({"problem_id": "p001", "completion": "1 + 1 = 2"}) + "\n")
    (sets / "t" / "ids.json").write_text(json.dumps({"problem_ids": ["p000"]}))
    claims, summary, cmp = judge_run(["t"], ["H", "G", "W", "P", "step"], [0.25], "G", ev, met, sets, margin=0.1,
                                     n_boot=1000)
    assert by_id(claims["claims"], "C2")["verdict"] == "holds"
    assert by_id(claims["claims"], "C3")["verdict"] == "inconclusive"  # W was not evaluated
    # step accuracy of G counts only the compared problem p000: one of two steps right
    assert summary["t"]["G"]["step_acc"] == 0.5
    assert cmp["t"]["_steps"]["G"]["steps"] == 2
