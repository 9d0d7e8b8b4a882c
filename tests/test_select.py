"""G/W selection on literal fixtures."""

from __future__ import annotations

import json

import pytest

from cotshape.core.errors import RecordError, StageError
from cotshape.core.records import write_jsonl
from cotshape.data.select import read_verified, select_gw


def s(pid, idx, correct, parsed=True):
    return {"id": f"{pid}#{idx}", "problem_id": pid, "sample_index": idx, "completion": f"{pid}-{idx}",
            "correct": correct, "parsed": parsed}


SAMPLES = [
    s("a", 0, True), s("a", 1, False), s("a", 2, True), s("a", 3, False),
    s("b", 0, False), s("b", 1, False, parsed=False),
    s("c", 0, True),
    s("d", 0, False, parsed=False), s("d", 1, False, parsed=False),
]
IDS = ["a", "b", "c", "d", "e"]


def test_one_g_and_one_w_per_problem():
    sets, counts = select_gw(SAMPLES, IDS, seed=0)
    assert [r["problem_id"] for r in sets["G"]] == ["a", "c"]
    assert [r["problem_id"] for r in sets["W"]] == ["a", "b"]
    assert all(r["correct"] for r in sets["G"])
    assert all(not r["correct"] and r["parsed"] for r in sets["W"])
    assert counts == {"problems": 5, "samples": 9, "with_correct": 2, "with_wrong": 2, "with_both": 1,
                      "with_unparsed_only": 1, "truncated": 0, "excluded_truncated": 0, "selected_G": 2,
                      "selected_W": 2, "verifier_errors": 0}


def test_unparsed_samples_are_never_w():
    sets, _ = select_gw(SAMPLES, IDS, seed=0)
    assert "b-1" not in {r["completion"] for r in sets["W"]}
    assert "d" not in {r["problem_id"] for r in sets["W"]}


def test_balance_keeps_problems_with_both():
    sets, counts = select_gw(SAMPLES, IDS, seed=0, balance=True)
    assert [r["problem_id"] for r in sets["G"]] == [r["problem_id"] for r in sets["W"]] == ["a"]
    assert counts["selected_G"] == counts["selected_W"] == 1


def test_seeded_and_independent_of_other_problems():
    picks = {seed: select_gw(SAMPLES, IDS, seed=seed)[0]["G"][0]["completion"] for seed in range(12)}
    assert set(picks.values()) == {"a-0", "a-2"}  # both candidates get drawn over seeds
    alone = select_gw([x for x in SAMPLES if x["problem_id"] == "a"], ["a"], seed=3)[0]
    assert alone["G"][0]["completion"] == select_gw(SAMPLES, IDS, seed=3)[0]["G"][0]["completion"]
    assert select_gw(list(reversed(SAMPLES)), IDS, seed=3)[0] == select_gw(SAMPLES, IDS, seed=3)[0]


def test_unknown_problem_is_an_error():
    with pytest.raises(ValueError, match="record 1: problem_id 'zzz' is not a training problem"):
        select_gw([s("zzz", 0, True)], IDS)


def test_grading_failures_are_never_w():
    broken = dict(s("e", 0, False), reason="verifier error: TimeoutError: took too long")
    genuine = dict(s("e", 1, False), reason="5 != gold 4")
    sets, _ = select_gw([broken, genuine], ["e"], seed=0)
    assert [r["completion"] for r in sets["W"]] == ["e-1"]
    sets, counts = select_gw([broken], ["e"], seed=0)
    assert sets["W"] == [] and counts["with_wrong"] == 0


def test_w_prefers_cots_that_finished_when_truncated_ones_are_allowed():
    cut = dict(s("f", 0, False), finish_reason="length")
    done = dict(s("f", 1, False), finish_reason="stop")
    for seed in range(5):
        assert select_gw([cut, done], ["f"], seed=seed, allow_truncated=True)[0]["W"][0]["completion"] == "f-1"
    # only if nothing else
    assert select_gw([cut], ["f"], seed=0, allow_truncated=True)[0]["W"][0]["completion"] == "f-0"


def test_truncated_cots_are_excluded_from_g_and_w_by_default():
    samples = [dict(s("g", 0, True), finish_reason="length"), dict(s("g", 1, False), finish_reason="length"),
               dict(s("g", 2, True), finish_reason="stop"),
               dict(s("h", 0, False), finish_reason="length"), dict(s("h", 1, True), finish_reason="length"),
               s("i", 0, False)]  # no finish_reason (older samples): counted as ended on its own
    for seed in range(6):
        sets, counts = select_gw(samples, ["g", "h", "i"], seed=seed)
        assert [r["completion"] for r in sets["G"]] == ["g-2"]
        assert [r["completion"] for r in sets["W"]] == ["i-0"]
    assert counts["truncated"] == counts["excluded_truncated"] == 4
    assert counts["with_correct"] == 1 and counts["with_wrong"] == 1 and counts["with_both"] == 0
    sets, counts = select_gw(samples, ["g", "h", "i"], seed=0, allow_truncated=True)
    assert [r["problem_id"] for r in sets["G"]] == ["g", "h"] and [r["problem_id"] for r in sets["W"]] == ["g", "h", "i"]
    assert counts["truncated"] == 4 and counts["excluded_truncated"] == 0


def test_bad_finish_reason_is_refused():
    with pytest.raises(RecordError, match="record 1: field 'finish_reason' must be stop or length, got 'eos'"):
        select_gw([dict(s("a", 0, True), finish_reason="eos")], IDS)


def write_lines(path, lines):
    write_jsonl(path, lines)
    return path


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("correct", "no", r"field 'correct' must be true or false, got 'no'"),
        ("parsed", 1, r"field 'parsed' must be true or false, got 1"),
        ("completion", None, r"field 'completion' must be a string, got None"),
        ("sample_index", "0", r"field 'sample_index' must be an integer >= 0, got '0'"),
        ("sample_index", True, r"field 'sample_index' must be an integer >= 0, got True"),
        ("problem_id", ["a"], r"field 'problem_id' must be a non-empty string, got \['a'\]"),
    ],
)
def test_verified_records_types_checked_with_file_and_line(tmp_path, field, value, match):
    bad = dict(s("a", 1, False), **{field: value})
    path = write_lines(tmp_path / "verified.jsonl", [s("a", 0, True), bad])
    with pytest.raises(RecordError, match=rf"{path}:2: {match}"):
        read_verified(path, IDS)


def test_duplicate_samples_refused(tmp_path):
    path = write_lines(tmp_path / "verified.jsonl", [s("a", 0, True), s("b", 0, False), s("a", 0, False)])
    with pytest.raises(RecordError, match=rf"{path}:3: duplicate sample a#0 \(first on line 1\)"):
        read_verified(path, IDS)


def test_unknown_problem_named_with_line(tmp_path):
    path = write_lines(tmp_path / "verified.jsonl", [s("a", 0, True), s("zzz", 0, True)])
    with pytest.raises(RecordError, match=rf"{path}:2: problem_id 'zzz' is not a training problem"):
        read_verified(path, IDS)


def test_good_file_reads(tmp_path):
    path = write_lines(tmp_path / "verified.jsonl", SAMPLES)
    assert read_verified(path, IDS) == SAMPLES


def test_too_many_verifier_errors_refused():
    broken = [dict(s(pid, 0, False), reason="verifier error: SandboxError: down") for pid in "abc"]
    fine = [s(pid, 1, False) for pid in "abcde"]
    _, counts = select_gw(broken + fine, IDS, seed=0, max_verifier_errors=0.5)
    assert counts["verifier_errors"] == 3
    with pytest.raises(StageError, match=r"3 of 8 samples \(38%\) could not be graded .*select\.max_verifier_errors"):
        select_gw(broken + fine, IDS, seed=0, max_verifier_errors=0.05)


@pytest.mark.parametrize("allow", [False, True])
def test_select_stage_reads_allow_truncated(tmp_path, allow):
    """The select stage passes select.allow_truncated on and its metrics count the exclusions."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from cotshape.core.records import read_jsonl

    root = Path(__file__).resolve().parents[1]
    problems = [{"id": pid, "task": "gsm8k", "question": f"q {pid}", "answer": "1", "solution": "", "tests": [],
                 "meta": {}} for pid in ("a", "b")]
    write_jsonl(tmp_path / "train.jsonl", problems)
    write_lines(tmp_path / "verified.jsonl", [
        dict(s("a", 0, True), finish_reason="stop"), dict(s("a", 1, False), finish_reason="length"),
        dict(s("b", 0, True), finish_reason="length"), dict(s("b", 1, False), finish_reason="stop")])
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["select"].update(allow_truncated=allow, balance=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, str(root / "stages" / "select_gw.py"), "--task", "gsm8k", "--problems",
         str(tmp_path / "train.jsonl"), "--verified", str(tmp_path / "verified.jsonl"), "--sets-dir",
         str(tmp_path / "sets"), "--metrics", str(tmp_path / "m.json")],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, COTSHAPE_PARAMS=str(tmp_path / "params.yaml")))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["truncated"] == 2 and metrics["excluded_truncated"] == (0 if allow else 2)
    g = [r["problem_id"] for r in read_jsonl(tmp_path / "sets" / "G.jsonl")]
    w = [r["problem_id"] for r in read_jsonl(tmp_path / "sets" / "W.jsonl")]
    assert (g, w) == ((["a", "b"], ["a", "b"]) if allow else (["a"], ["b"]))
