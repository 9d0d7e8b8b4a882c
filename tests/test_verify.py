"""Batch verification: verify_records, verify_file and the GuardedPool behind math grading."""

from __future__ import annotations

import json
import os
import time

import pytest

from cotshape.core.records import RecordError, make_problem, write_jsonl
from cotshape.data.verify import summarize, verify_file, verify_records
from cotshape.execution.pool import GuardedPool
from cotshape.tasks import get_task
from cotshape.tasks.countdown import Countdown


def cd_problem(pid: str, numbers: list[int], target: int) -> dict:
    return make_problem(pid, "countdown", "q", "", "", meta={"numbers": numbers, "target": target})


PROBLEMS = {"a": cd_problem("a", [1, 2, 3, 4], 24), "b": cd_problem("b", [2, 3], 6)}
RECORDS = [
    {"problem_id": "a", "completion": "<answer>(1+2+3)*4</answer>", "sample": 0},
    {"problem_id": "b", "completion": "<answer>2+3</answer>", "sample": 1},
    {"problem_id": "a", "completion": "no idea", "sample": 2},
    {"problem_id": "b", "completion": "<answer>2*3</answer>", "sample": 3},
]


def test_verify_records_adds_verdicts_in_order():
    out = verify_records(get_task("countdown"), PROBLEMS, RECORDS, progress=False)
    assert [o["sample"] for o in out] == [0, 1, 2, 3]
    assert [o["correct"] for o in out] == [True, False, False, True]
    assert [o["parsed"] for o in out] == [True, True, False, True]
    assert out[1]["extracted"] == "2+3" and out[1]["reason"] == "evaluates to 5, not 6"
    assert "correct" not in RECORDS[0]  # inputs are not modified


class CountingCountdown(Countdown):
    """The real Countdown grader, counting how often it grades."""

    calls = 0

    def check(self, problem, extracted, completion):
        CountingCountdown.calls += 1
        return super().check(problem, extracted, completion)


def test_identical_pairs_are_graded_once():
    CountingCountdown.calls = 0
    recs = [{"problem_id": "a", "completion": f"try {i}: <answer>(1+2+3)*4</answer>"} for i in range(50)]
    recs += [{"problem_id": "b", "completion": "<answer>(1+2+3)*4</answer>"}]
    out = verify_records(CountingCountdown(), PROBLEMS, recs, progress=False)
    assert CountingCountdown.calls == 2
    assert all(o["correct"] for o in out[:50]) and not out[50]["correct"]


def test_unknown_problem_id_is_an_error():
    with pytest.raises(RecordError, match=r"record 1: unknown problem_id 'zzz'"):
        verify_records(get_task("countdown"), PROBLEMS, [{"problem_id": "zzz", "completion": ""}], progress=False)


def test_missing_completion_is_an_error():
    with pytest.raises(RecordError, match=r"record 2: missing field 'completion'"):
        verify_records(get_task("countdown"), PROBLEMS, [RECORDS[0], {"problem_id": "a"}], progress=False)


def test_non_string_completion_is_unparsed():
    out = verify_records(get_task("countdown"), PROBLEMS, [{"problem_id": "a", "completion": None}], progress=False)
    assert (out[0]["correct"], out[0]["parsed"]) == (False, False)


def test_summarize_reports_both_accuracies():
    s = summarize([{"correct": True, "parsed": True}, {"correct": False, "parsed": True}, {"correct": False, "parsed": False}])
    assert s == {"n": 3, "correct": 1, "parsed": 2, "accuracy": 1 / 3, "accuracy_parsed": 0.5, "verifier_errors": 0}


def test_math_batch_agrees_with_single_verify():
    task = get_task("math")
    gold = {"f": "\\frac{1}{2}", "s": "-3, 2", "r": "2\\sqrt{3}", "n": "7"}
    probs = {k: make_problem(k, "math", "q", v, "") for k, v in gold.items()}
    answers = ["0.5", "1/2", "\\frac{1}{3}", "2, -3", "-3", "\\sqrt{12}", "x + 1", "7", "7.0", "-7", "9^{9^{9^{9}}}"]
    recs = [{"problem_id": k, "completion": f"so $\\boxed{{{a}}}$"} for k in gold for a in answers]
    recs += [{"problem_id": "n", "completion": "I give up"}]
    out = verify_records(task, probs, recs, workers=2, progress=False)
    single = [task.verify(probs[r["problem_id"]], r["completion"]) for r in recs]
    assert [(o["correct"], o["parsed"], o["extracted"]) for o in out] == [(v.correct, v.parsed, v.extracted) for v in single]
    assert sum(o["correct"] for o in out) == 6  # 0.5, 1/2, "2, -3", \\sqrt{12}, 7, 7.0


def _slow_or_fast(x: float) -> float:
    time.sleep(x)
    return x


def _die(x: int) -> int:
    if x == 3:
        os._exit(1)
    return x


def _raise(x: int) -> int:
    if x == 1:
        raise ValueError("bad item")
    return x


def test_pool_kills_an_item_past_its_deadline_and_finishes_the_rest():
    t = time.monotonic()
    res = GuardedPool(_slow_or_fast, workers=2, item_timeout_s=1.0).map([(0.0,), (30.0,), (0.0,), (0.0,)], chunk_size=2)
    assert time.monotonic() - t < 10
    assert res[0] == ("ok", 0.0) and res[2] == ("ok", 0.0) and res[3] == ("ok", 0.0)
    assert res[1][0] == "timeout" and "killed" in res[1][1]


def test_pool_survives_a_dying_worker():
    res = GuardedPool(_die, workers=2, item_timeout_s=5.0).map([(i,) for i in range(6)], chunk_size=3)
    assert [r[1] for r in res if r[0] == "ok"] == [0, 1, 2, 4, 5]
    assert res[3][0] == "timeout" and "died" in res[3][1]


def test_pool_reports_exceptions_per_item():
    res = GuardedPool(_raise, workers=1).map([(0,), (1,), (2,)])
    assert res[0] == ("ok", 0) and res[2] == ("ok", 2)
    assert res[1] == ("error", "ValueError: bad item")


def test_verify_file_writes_records_and_returns_summary(tmp_path):
    probs, samples, out = tmp_path / "p.jsonl", tmp_path / "s.jsonl", tmp_path / "out" / "v.jsonl"
    write_jsonl(probs, PROBLEMS.values())
    write_jsonl(samples, RECORDS)
    summary = verify_file("countdown", probs, samples, out, progress=False)
    assert summary["n"] == 4 and summary["correct"] == 2 and summary["parsed"] == 3
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["correct"] for x in lines] == [True, False, False, True]


def test_verify_file_bad_line_names_file_and_line_and_writes_nothing(tmp_path):
    probs, samples, out = tmp_path / "p.jsonl", tmp_path / "s.jsonl", tmp_path / "v.jsonl"
    write_jsonl(probs, PROBLEMS.values())
    samples.write_text('{"problem_id": "a", "completion": "x"}\n{"problem_id": "a"}\n')
    with pytest.raises(RecordError, match=r"s.jsonl:2: missing field\(s\) completion"):
        verify_file("countdown", probs, samples, out, progress=False)
    assert not out.exists()


def test_verify_file_refuses_problems_of_another_task(tmp_path):
    probs, samples = tmp_path / "p.jsonl", tmp_path / "s.jsonl"
    write_jsonl(probs, PROBLEMS.values())
    write_jsonl(samples, RECORDS)
    with pytest.raises(RecordError, match=r"is a 'countdown' problem, not 'math'"):
        verify_file("math", probs, samples, tmp_path / "v.jsonl", progress=False)


def mbpp_files(tmp_path):
    problems = get_task("mbpp").load("train", source="offline", limit=2, seed=0)
    write_jsonl(tmp_path / "train.jsonl", problems)
    samples = [{"problem_id": p["id"], "sample_index": 0, "completion": "```python\ndef f():\n    return 1\n```"}
               for p in problems]
    write_jsonl(tmp_path / "samples.jsonl", samples)
    return problems, samples


def test_misspelt_sandbox_mode_stops_verify(tmp_path, monkeypatch):
    from cotshape.core.errors import SandboxError

    problems, samples = mbpp_files(tmp_path)
    monkeypatch.setenv("COTSHAPE_SANDBOX_MODE", "bwrapp")
    with pytest.raises(SandboxError, match=r"COTSHAPE_SANDBOX_MODE=bwrapp: expected one of bwrap, rlimit or auto"):
        verify_records(get_task("mbpp"), {p["id"]: p for p in problems}, samples, progress=False)


def test_misspelt_sandbox_mode_stops_the_stage_with_one_line(tmp_path):
    import subprocess
    import sys

    mbpp_files(tmp_path)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, COTSHAPE_SANDBOX_MODE="bwrapp", COTSHAPE_PARAMS=os.path.join(root, "params.yaml"))
    proc = subprocess.run([sys.executable, os.path.join(root, "stages", "verify.py"), "--task", "mbpp",
                           "--problems", str(tmp_path / "train.jsonl"), "--samples", str(tmp_path / "samples.jsonl"),
                           "--out", str(tmp_path / "v.jsonl"), "--metrics", str(tmp_path / "m.json")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=root)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "COTSHAPE_SANDBOX_MODE=bwrapp" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "v.jsonl").exists() and not (tmp_path / "m.json").exists()


def test_sandbox_failing_its_self_test_stops_verify(tmp_path):
    """In a fresh interpreter (no sandbox mode self-tested yet), a sandbox whose every program
    fails to start stops verify at the self-test, with the sandbox's own reason."""
    import subprocess
    import sys

    mbpp_files(tmp_path)
    script = """
import sys
import cotshape.execution.sandbox.api as sb
from cotshape.core.errors import SandboxError
from cotshape.core.records import read_jsonl, read_problems
from cotshape.data.verify import verify_records
from cotshape.tasks import get_task

broken = sb.ExecutionResult(False, "sandbox_error", "sandbox server (rlimit) failed to start", "", "", None,
                            0.0, False, False, False, "rlimit")
sb.run_program = lambda *a, **k: broken
problems = read_problems(sys.argv[1])
try:
    verify_records(get_task("mbpp"), {p["id"]: p for p in problems}, read_jsonl(sys.argv[2]), progress=False)
except SandboxError as e:
    print("SandboxError:", e)
"""
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "train.jsonl"), str(tmp_path / "samples.jsonl")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "SandboxError: sandbox self-test failed: sandbox_error: sandbox server" in proc.stdout, proc.stdout


def test_verifier_errors_are_counted():
    class Broken(Countdown):
        def check(self, problem, extracted, completion):
            raise RuntimeError("gold answer unusable")

    out = verify_records(Broken(), PROBLEMS, RECORDS, progress=False)
    assert summarize(out)["verifier_errors"] == 3  # the unparsed one was never graded


def test_unhashable_problem_id_names_file_and_line(tmp_path):
    write_jsonl(tmp_path / "p.jsonl", list(PROBLEMS.values()))
    (tmp_path / "s.jsonl").write_text(json.dumps({"problem_id": "a", "completion": "x"}) + "\n"
                                      + json.dumps({"problem_id": ["a"], "completion": "x"}) + "\n")
    with pytest.raises(RecordError, match=r"s\.jsonl: record 2: field 'problem_id' must be a string, got \['a'\]"):
        verify_file("countdown", tmp_path / "p.jsonl", tmp_path / "s.jsonl", tmp_path / "o.jsonl", progress=False)
    with pytest.raises(RecordError, match=r"record 1: field 'problem_id' must be a string"):
        verify_records(get_task("countdown"), PROBLEMS, [{"problem_id": {"a": 1}, "completion": "x"}], progress=False)
