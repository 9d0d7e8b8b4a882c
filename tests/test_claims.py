"""Claims: paired comparisons and verdicts on literal evaluation records and closeness metrics."""

from __future__ import annotations

import pytest

from cotshape.core.errors import RecordError
from cotshape.core.records import write_json, write_jsonl
from cotshape.evaluation.claims import (
    correctness,
    correctness_by_run,
    judge_run,
    judge_task,
    mixture_sets,
    paired,
    paired_runs,
    summary_entry,
)

N = 200
IDS = [f"p{i:03d}" for i in range(N)]


def acc(k: int, offset: int = 0) -> dict[str, bool]:
    """``k`` of the N problems right (problems offset .. offset+k-1, wrapping)."""
    right = {(offset + j) % N for j in range(k)}
    return {pid: i in right for i, pid in enumerate(IDS)}


def runs(*ks: int, offset: int = 0) -> list[dict[str, bool]]:
    """One training run per k: ``k`` problems right in that run."""
    return [acc(k, offset) for k in ks]


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


def test_claim_holds_when_the_run_level_interval_excludes_the_alternative():
    # three runs per arm; G right on about 120 problems, H on about 60 of them: G - H = +30 points
    evals = {"base": runs(10), "H": runs(60, 62, 58), "G": runs(120, 116, 124), "W": runs(60, 61, 59),
             "P": runs(60, 60, 60)}
    claims, cmp = judge_task("t", evals, closeness(), [0.25], "G", margin=0.1, n_boot=2000)
    c2 = by_id(claims, "C2")
    assert c2["verdict"] == "holds"
    ev = c2["evidence"]
    assert ev["runs"] == 3 and ev["per_run"] == pytest.approx([0.3, 0.27, 0.33])
    assert ev["diff"] == pytest.approx(0.3, abs=0.01)
    assert ev["ci95"][0] > 0
    # never narrower than the t-interval over the run-level differences
    assert ev["ci95"][0] <= ev["t_ci95"][0] and ev["ci95"][1] >= ev["t_ci95"][1]
    # the untrained student is one run, paired with every run of G
    assert cmp["G"]["vs_base"]["runs"] == 3
    assert cmp["G"]["vs_base"]["per_run"] == pytest.approx([0.55, 0.53, 0.57])
    assert by_id(claims, "C1")["verdict"] == "holds"  # both G and W below H with intervals above 0


def test_one_training_run_gives_no_run_level_verdict():
    # +30 points on one run: far beyond the test-problem noise, but one run says nothing about the
    # spread of training runs, so the claim about training on G is inconclusive, with the reason
    evals = {"base": runs(10), "H": runs(60), "G": runs(120), "W": runs(60), "P": runs(60)}
    claims, cmp = judge_task("t", evals, closeness(), [0.25], "G", margin=0.1, n_boot=2000)
    c2 = by_id(claims, "C2")
    assert c2["verdict"] == "inconclusive"
    assert c2["evidence"]["ci95"] is None and "one training run" in c2["evidence"]["reason"]
    assert c2["evidence"]["per_run_ci95"][0][0] > 0  # the single run's own paired interval is kept
    assert by_id(claims, "C1")["verdict"] == "holds"  # closeness does not train: unaffected


def test_runs_that_disagree_make_the_claim_inconclusive():
    # per-run G - H of +17, +12.5 and +1.5 points (the committed seeds of the default): each run
    # alone is far from 0 or near it; over runs the interval covers 0
    h = runs(100, 100, 100)
    g = [acc(134), acc(125), acc(103)]
    claims, _ = judge_task("t", {"base": runs(10), "H": h, "G": g, "W": h, "P": h}, closeness(), [0.25], "G",
                           margin=0.1, n_boot=2000)
    ev = by_id(claims, "C2")["evidence"]
    assert ev["per_run"] == pytest.approx([0.17, 0.125, 0.015])
    assert by_id(claims, "C2")["verdict"] == "inconclusive"
    lo, hi = ev["ci95"]
    assert lo < 0 < hi
    assert hi - lo > max(b - a for a, b in ev["per_run_ci95"])  # wider than any one run's interval


def test_claim_contradicted_when_the_interval_excludes_the_claim():
    evals = {"base": runs(10), "H": runs(120, 118, 122), "G": runs(60, 62, 58), "W": runs(60, 59, 61),
             "P": runs(60, 60, 60)}
    claims, _ = judge_task("t", evals, closeness(h=0.8, g=1.2, w=1.1), [0.25], "G", margin=0.1, n_boot=2000)
    assert by_id(claims, "C2")["verdict"] == "contradicted"
    assert by_id(claims, "C3")["verdict"] == "contradicted"
    assert by_id(claims, "C1")["verdict"] == "contradicted"


def test_claim_inconclusive_on_a_tie():
    # same accuracy, different problems: the paired interval straddles 0
    evals = {"base": runs(10), "H": runs(60, 60), "G": runs(60, 60, offset=30), "W": runs(60, 60),
             "P": runs(60, 60)}
    claims, _ = judge_task("t", evals, closeness(), [0.25], "G", margin=0.1, n_boot=2000)
    c2 = by_id(claims, "C2")
    assert c2["verdict"] == "inconclusive"
    lo, hi = c2["evidence"]["ci95"]
    assert lo < 0 < hi
    # identical students: a tie, never "holds"
    assert by_id(claims, "C3")["verdict"] == "inconclusive"


def test_arms_with_unequal_runs_pair_the_runs_both_have():
    """sft.runs_by_set: G and H trained 3 times, the others twice. A comparison pairs runs 0..K-1
    of both arms (K the fewer) and records what each arm trained; the mixture slope likewise."""
    two, three = paired_runs(runs(100, 110), runs(120, 118, 40)), paired_runs(runs(100, 110), runs(120, 118))
    for key in ("per_run", "ci95", "diff", "sd"):
        assert two[key] == three[key]  # the third run of B is in neither
    assert two["runs"] == 2 and (two["runs_a"], two["runs_b"]) == (2, 3) and "runs_a" not in three
    evals = {"base": runs(10), "H": runs(60, 62, 58), "G": runs(120, 116, 124), "W": runs(60, 61),
             "P": runs(60, 60), "mix-0.25": runs(110, 112)}
    claims, _ = judge_task("t", evals, closeness(), [0.25], "G", margin=0.1, n_boot=2000)
    assert by_id(claims, "C2")["evidence"]["runs"] == 3 and "runs_a" not in by_id(claims, "C2")["evidence"]
    c3 = by_id(claims, "C3")["evidence"]  # W - H: H's runs 0 and 1
    assert c3["runs"] == 2 and (c3["runs_a"], c3["runs_b"]) == (3, 2)
    assert c3["per_run"] == pytest.approx([0.0, -0.005])
    c6 = by_id(claims, "C6")["evidence"]
    assert c6["runs"] == 2 and c6["runs_by_set"] == {"G": 3, "mix-0.25": 2}


def test_correctness_by_run_groups_records_by_run():
    recs = [{"problem_id": "a", "correct": True, "run": 1}, {"problem_id": "a", "correct": False, "run": 0}]
    assert correctness_by_run(recs) == [{"a": False}, {"a": True}]
    assert correctness_by_run([{"problem_id": "a", "correct": True}]) == [{"a": True}]  # no run: run 0
    with pytest.raises(RecordError, match=r"runs \[0, 2\]"):
        correctness_by_run([{"problem_id": "a", "correct": True, "run": 0}, {"problem_id": "a", "correct": True, "run": 2}])


def test_c5_equivalence_and_c6_trend():
    evals = {"base": runs(10), "H": runs(60, 60, 60), "G": runs(100, 102, 98), "W": runs(60, 60, 60),
             "P": runs(60, 60, 60), "mix-0.25": runs(100, 101, 98), "mix-0.5": runs(70, 72, 69),
             "mix-1.0": runs(20, 21, 19)}
    claims, _ = judge_task("t", evals, closeness(), [0.25, 0.5, 1.0], "G", margin=0.1, n_boot=2000)
    c5, c6 = by_id(claims, "C5"), by_id(claims, "C6")
    assert c5["verdict"] == "holds" and c5["evidence"]["diff"] == pytest.approx(-0.0025, abs=0.003)
    assert c6["verdict"] == "holds" and c6["evidence"]["diff"] < 0
    assert c6["evidence"]["runs"] == 3 and len(c6["evidence"]["per_run"]) == 3
    assert c6["evidence"]["sets"] == ["G", "mix-0.25", "mix-0.5", "mix-1.0"]
    # 25 % flawed costs 30 points: outside a 10-point margin, so C5 is contradicted
    evals["mix-0.25"] = runs(40, 41, 39)
    claims, _ = judge_task("t", evals, closeness(), [0.25, 0.5, 1.0], "G", margin=0.1, n_boot=2000)
    assert by_id(claims, "C5")["verdict"] == "contradicted"


def test_missing_sets_make_claims_inconclusive_with_a_reason():
    claims, _ = judge_task("t", {"base": runs(10), "H": runs(60), "G": None}, None, [0.25], "G", margin=0.1)
    c2 = by_id(claims, "C2")
    assert c2["verdict"] == "inconclusive" and "G" in c2["evidence"]["missing"]
    assert by_id(claims, "C1")["evidence"]["missing"]


def test_mixture_curve_starts_at_the_base_set():
    assert mixture_sets([1.0, 0.25], "G") == [(0.0, "G"), (0.25, "mix-0.25"), (1.0, "mix-1.0")]


def test_summary_entry_is_one_column_per_number():
    evm = {"base": {"accuracy": 0.05, "ci95": [0.03, 0.09], "n": 200, "runs": 1},
           "H": {"accuracy": 0.3, "ci95": [0.24, 0.37], "n": 200, "runs": 4}, "G": {"n": 0, "skipped": 1}}
    cmp = {"H": {"vs_base": {"diff": 0.25}}}
    s = summary_entry(evm, cmp, {"H": {"mean_loss": 1.1}}, {"H": {"step_accuracy": 1.0}},
                      {"teacher_accuracy": 0.2}, {"problems": 100, "with_both": 60, "compared": 60})
    # runs: the training runs per set, not the untrained student's one model listed first
    assert s == {"teacher_acc": 0.2, "both_frac": 0.6, "n_test": 200, "runs": 4,
                 "base": {"acc": 0.05, "ci": "[0.030, 0.090]"},
                 "H": {"acc": 0.3, "ci": "[0.240, 0.370]", "loss": 1.1, "step_acc": 1.0}}


def test_judge_run_reads_the_pipeline_layout(tmp_path):
    ev, met, sets = tmp_path / "eval", tmp_path / "metrics", tmp_path / "sets"
    for d in (ev, met / "eval", sets / "t"):
        d.mkdir(parents=True)
    for name, ks in {"base": [10], "H": [60, 64], "G": [120, 118]}.items():
        recs = [{"run": r, "problem_id": pid, "correct": ok} for r, k in enumerate(ks) for pid, ok in acc(k).items()]
        write_jsonl(ev / f"t-{name}.jsonl", recs)
        per_run = [{"accuracy": k / N, "ci95": [k / N - 0.06, k / N + 0.06], "n": N} for k in ks]
        write_json(met / "eval" / f"t-{name}.json", {"accuracy": ks[0] / N, "ci95": [0, 1], "n": N,
                                                     "runs": len(ks), "per_run": per_run})
    write_jsonl(sets / "t" / "G.jsonl", [{"problem_id": "p000", "completion": "3 + 4 = 8\n2 * 2 = 4"},
                                         {"problem_id": "p001", "completion": "1 + 1 = 2"}])
    write_json(sets / "t" / "ids.json", {"problem_ids": ["p000"]})
    claims, summary, cmp = judge_run(["t"], ["H", "G", "W", "P", "step"], [0.25], "G", ev, met, sets, margin=0.1,
                                     n_boot=1000)
    c2 = by_id(claims["claims"], "C2")
    assert c2["verdict"] == "holds" and c2["evidence"]["per_run"] == pytest.approx([0.3, 0.27])
    assert by_id(claims["claims"], "C3")["verdict"] == "inconclusive"  # W was not evaluated
    # the variance breakdown of this one data draw: per set and per claim, SFT vs test problems
    var = claims["variance"]["t"]
    assert set(var["sets"]) == {"H", "G"} and set(var["claims"]) == {"C2"}
    assert var["claims"]["C2"]["contrast"] == "G - H" and var["claims"]["C2"]["parts"]["data"] is None
    assert var["power"]["half_width"] == pytest.approx((c2["evidence"]["ci95"][1] - c2["evidence"]["ci95"][0]) / 2)
    # step accuracy of G counts only the compared problem p000: one of two steps right
    assert summary["t"]["G"]["step_acc"] == 0.5
    assert cmp["t"]["_steps"]["G"]["steps"] == 2
