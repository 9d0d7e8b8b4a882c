"""Flawed mixtures and step-level degradation on literal fixtures."""

from __future__ import annotations

import random

import pytest

from cotshape.core.records import read_jsonl
from cotshape.data.degrade import (
    corrupt_cot,
    degrade_steps,
    flawed_from_corruption,
    flawed_from_model,
    keep_for,
    make_mixtures,
    make_step_degraded,
    model_flawed_seed,
    perturb_numbers,
    reasoning_steps,
    split_steps,
)
from cotshape.tasks import get_task

COT = "Tom has 3 apples.\nHe buys 4 more.\n3 + 4 = 7\nThe answer is 7."


def rec(pid, completion=COT):
    return {"problem_id": pid, "prompt": [{"role": "user", "content": pid}], "completion": completion}


def test_perturb_changes_every_number():
    out, n = perturb_numbers("12 apples cost 3.50 each, total 42", random.Random(0))
    assert n == 3
    nums = out.split()
    assert nums[0] != "12" and nums[3] != "3.50" and nums[-1] != "42"
    assert len(nums[3].split(".")[1]) == 2  # keeps the decimal form


def test_corrupt_cot_touches_every_step_and_order():
    out = corrupt_cot(COT, random.Random(0))
    steps = split_steps(out)
    assert len(steps) == 4 and steps != split_steps(COT)
    assert sorted(steps) != sorted(split_steps(COT))  # numbers changed, not just shuffled
    assert all(step not in split_steps(COT) for step in steps)


def test_degrade_steps_keeps_the_answer_line_and_changes_k_steps():
    for seed in range(10):
        out = degrade_steps(COT, 1, random.Random(seed))
        lines = out.split("\n")
        assert lines[-1] == "The answer is 7."
        changed = sum(a != b for a, b in zip(lines, COT.split("\n"), strict=False)) + abs(len(lines) - 4)
        assert 1 <= changed <= 2  # one step perturbed (or dropped, which shifts the rest)


def test_mixtures_same_size_nested_and_seeded():
    good = [rec(f"p{i}") for i in range(8)]
    flawed = {f"p{i}": f"flawed {i}" for i in range(8)}
    mixes, m = make_mixtures(good, flawed, [0.0, 0.25, 0.5, 1.0], seed=1)
    assert all(len(v) == 8 for v in mixes.values())
    flawed_ids = {p: {r["problem_id"] for r in v if r["flawed"]} for p, v in mixes.items()}
    assert [len(flawed_ids[p]) for p in (0.0, 0.25, 0.5, 1.0)] == [0, 2, 4, 8]
    assert flawed_ids[0.25] <= flawed_ids[0.5] <= flawed_ids[1.0]
    assert all(r["completion"].startswith("flawed") for r in mixes[1.0])
    assert m["fractions"]["0.25"]["actual_fraction"] == 0.25
    again, _ = make_mixtures(good, flawed, [0.25], seed=1)
    assert again[0.25] == mixes[0.25]
    assert any({r["problem_id"] for r in make_mixtures(good, flawed, [0.25], seed=s)[0][0.25] if r["flawed"]} != flawed_ids[0.25] for s in range(2, 8))


def test_mixture_reports_unavailable_flawed():
    good = [rec(f"p{i}") for i in range(4)]
    mixes, m = make_mixtures(good, {"p0": "bad"}, [1.0], seed=0)
    assert sum(r["flawed"] for r in mixes[1.0]) == 1
    assert m["fractions"]["1.0"]["flawed_unavailable"] == 3


def test_flawed_from_corruption_is_verified_wrong():
    task = get_task("gsm8k")
    problem = {"id": "q", "task": "gsm8k", "question": "Tom has 3 apples and buys 4.", "answer": "7",
               "solution": "", "tests": [], "meta": {}}
    good = [rec("q")]
    assert task.verify(problem, COT).correct
    flawed = flawed_from_corruption(good, lambda pid, t: not task.verify(problem, t).correct, seed=0)
    assert not task.verify(problem, flawed["q"]).correct and task.verify(problem, flawed["q"]).parsed
    # a CoT with no number cannot be corrupted into a wrong one: no entry
    none = flawed_from_corruption([rec("q", "It is seven.")], lambda pid, t: False, seed=0)
    assert none == {}


def test_step_degraded_set():
    out = make_step_degraded([rec("a"), rec("b")], k=2, seed=0)
    assert [r["problem_id"] for r in out] == ["a", "b"]
    assert all(r["completion"] != COT and r["degraded_steps"] == 2 for r in out)


def test_step_degraded_records_how_many_steps_a_short_cot_really_lost():
    """A one-step CoT (one reasoning line, then the answer) has nothing more to corrupt at k=2:
    it is the same text as at k=1, and the record says 1 step, not 2."""
    one = "Sam has 9 + 6 = 15 balloons.\nThe answer is 15."
    k1 = make_step_degraded([rec("a", one), rec("b")], k=1, seed=0)
    k2 = make_step_degraded([rec("a", one), rec("b")], k=2, seed=0)
    assert k2[0]["completion"] == k1[0]["completion"] != one
    assert [r["degraded_steps"] for r in k2] == [1, 2]  # COT has 3 reasoning steps
    assert reasoning_steps(one) == 1 and reasoning_steps(COT) == 3


def test_mixture_counts_round_half_up():
    good = [rec(f"p{i}") for i in range(6)]
    flawed = {f"p{i}": "bad" for i in range(6)}
    mixes, _ = make_mixtures(good, flawed, [0.25, 0.75], seed=0)
    assert [sum(r["flawed"] for r in mixes[p]) for p in (0.25, 0.75)] == [2, 5]  # 1.5 -> 2, 4.5 -> 5


def test_flawed_from_model_keeps_first_wrong_candidate_seeded_by_problem():
    good = [{"problem_id": "a", "completion": "..."}, {"problem_id": "b", "completion": "..."},
            {"problem_id": "c", "completion": "..."}]
    cands = {"a": ["The answer is 4.", "The answer is 5.", "The answer is 6."],  # 4 is right
             "b": ["no answer at all", "The answer is 4."],  # nothing parsed-and-wrong
             "c": ["The answer is 9."]}
    right = {"a": "4", "b": "4", "c": "1"}
    seen = []

    def generate(ids, seeds):
        seen.append(dict(zip(ids, seeds, strict=True)))
        return [cands[i] for i in ids]

    def is_wrong(pid, text):  # parsed and wrong, as the stage asks of the verifier
        return "answer is" in text and not text.endswith(f" {right[pid]}.")

    out = flawed_from_model(good, generate, is_wrong, seed=0)
    assert out == {"a": "The answer is 5.", "c": "The answer is 9."}
    flawed_from_model(good[::-1], generate, is_wrong, seed=0)
    assert seen[0] == seen[1] == {pid: model_flawed_seed(0, pid) for pid in "abc"}  # keyed by id
    assert len(set(seen[0].values())) == 3 and model_flawed_seed(1, "a") != model_flawed_seed(0, "a")
    assert flawed_from_model([], generate, is_wrong, seed=0) == {} and len(seen) == 2


def _stage_inputs(tmp_path, set_name: str, n: int) -> None:
    """The degrade stage's inputs in ``tmp_path``: ``n`` offline gsm8k training problems
    (train.jsonl) and their human solutions as the good set (``SET_NAME.jsonl``)."""
    from cotshape.core.records import write_jsonl
    from cotshape.data.select import training_record

    task = get_task("gsm8k")
    problems = task.load("train", source="offline", limit=n, seed=0)
    write_jsonl(tmp_path / "train.jsonl", problems)
    write_jsonl(tmp_path / f"{set_name}.jsonl", [training_record("gsm8k", set_name, p["id"], task.chat_messages(p),
                                                                  task.human_completion(p)) for p in problems])


@pytest.mark.slow
def test_degrade_stage_with_model_flawed_source(tmp_path, tiny_model_dir):
    """The degrade stage with ``flawed_source: model`` on the tiny model: the teacher really
    samples, whatever verifies parsed-and-wrong is used, the rest is counted as unavailable."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml


    root = Path(__file__).resolve().parents[1]
    _stage_inputs(tmp_path, "H", 3)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["base"].update(device="cpu", dtype="float32", teacher=str(tiny_model_dir))
    params["sample"].update(max_new_tokens=8, batch_size=8)
    params["degrade"].update(flawed_source="model", flawed_fractions=[1.0])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.run(
        [sys.executable, str(root / "stages" / "degrade.py"), "--task", "gsm8k", "--problems", str(tmp_path / "train.jsonl"),
         "--good", str(tmp_path / "H.jsonl"), "--teacher", str(tiny_model_dir), "--mix-dir", str(tmp_path / "mix"),
         "--step-dir", str(tmp_path / "step"), "--metrics", str(tmp_path / "d.json")],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, COTSHAPE_PARAMS=str(tmp_path / "params.yaml"), HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((tmp_path / "d.json").read_text())
    assert metrics["flawed_source"] == "model" and metrics["size"] == 3
    assert metrics["backend"] == "transformers"  # base.backend generated the flawed CoTs
    full = metrics["fractions"]["1.0"]
    assert full["flawed"] + full["flawed_unavailable"] == 3 and full["flawed"] == metrics["flawed_available"]
    assert sorted(p.name for p in (tmp_path / "mix").iterdir()) == ["mix-1.0.jsonl"]


def test_degrade_stage_removes_folders_a_killed_run_left(tmp_path):
    """A killed degrade leaves ``.mix.*`` beside the mixture folder (DVC ignores it); the next
    run removes it and writes the mixtures and one step-degraded set per degrade.step_k
    (programmatic flaws: no model loaded)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml


    root = Path(__file__).resolve().parents[1]
    _stage_inputs(tmp_path, "G", 4)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["degrade"].update(flawed_source="corrupt", flawed_fractions=[0.5, 1.0], step_k=[1, 3])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    stale = tmp_path / ".mix.killed"
    stale.mkdir()
    (stale / "mix-0.5.jsonl").write_text('{"torn": ')
    (tmp_path / ".step.killed").mkdir()
    proc = subprocess.run(
        [sys.executable, str(root / "stages" / "degrade.py"), "--task", "gsm8k", "--problems", str(tmp_path / "train.jsonl"),
         "--good", str(tmp_path / "G.jsonl"), "--teacher", "unused-with-corrupt", "--mix-dir", str(tmp_path / "mix"),
         "--step-dir", str(tmp_path / "step"), "--metrics", str(tmp_path / "d.json")],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, COTSHAPE_PARAMS=str(tmp_path / "params.yaml"), HF_HUB_OFFLINE="1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not stale.exists() and not list(tmp_path.glob(".mix.*")) and not list(tmp_path.glob(".step.*"))
    assert sorted(p.name for p in (tmp_path / "mix").iterdir()) == ["mix-0.5.jsonl", "mix-1.0.jsonl"]
    # the step_k sweep: one set per k, named step-K, in the step folder (one DVC out)
    assert sorted(p.name for p in (tmp_path / "step").iterdir()) == ["step-1.jsonl", "step-3.jsonl"]
    step3 = read_jsonl(tmp_path / "step" / "step-3.jsonl")
    good = {r["problem_id"]: r["completion"] for r in read_jsonl(tmp_path / "G.jsonl")}
    have = {r["problem_id"]: reasoning_steps(good[r["problem_id"]]) for r in step3}
    assert {r["set"] for r in step3} == {"step-3"}
    assert [r["degraded_steps"] for r in step3] == [min(3, have[r["problem_id"]]) for r in step3]
    assert step3[0]["id"] == f"gsm8k-step-3-{step3[0]['problem_id']}" and len(step3) == 4
    metrics = json.loads((tmp_path / "d.json").read_text())
    assert metrics["step_k"] == [1, 3] and metrics["step_sets"] == ["step-1", "step-3"]
    # a CoT with fewer than k reasoning steps is counted (it repeats a smaller k)
    assert metrics["fewer_steps_than_k"] == {"step-1": 0, "step-3": sum(n < 3 for n in have.values())}
    assert metrics["backend"] is None  # programmatic flaws: no model ran


# ---- task-aware flaws: literal CoTs of each task --------------------------------------------------

#: (problem, correct CoT, the restatement line that must survive) per task; the CoTs verify correct
LITERAL = {
    "gsm8k": ({"id": "g", "task": "gsm8k", "question": "Natalia sold clips to 48 of her friends in April, and then "
               "she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?",
               "answer": "72", "solution": "", "tests": [], "meta": {}},
              "Natalia sold 48 clips in April.\nIn May she sold half as many: 48 / 2 = 24 clips.\n"
              "Altogether she sold 48 + 24 = 72 clips.\nThe answer is 72.\nI hope this helps!",
              "Natalia sold 48 clips in April."),
    "math": ({"id": "m", "task": "math", "question": "What is $2^3 + 5$?", "answer": "13", "solution": "",
              "tests": [], "meta": {}},
             "We need $2^3 + 5$.\nFirst $2^3 = 8$.\nThen $8 + 5 = 13$.\nSo the answer is $\\boxed{13}$.",
             "We need $2^3 + 5$."),
    "countdown": ({"id": "c", "task": "countdown", "question": "Using the numbers [3, 5, 2], make 13.",
                   "answer": "3 * 5 - 2", "solution": "", "tests": [], "meta": {"numbers": [3, 5, 2], "target": 13}},
                  "I need to make 13 from 3, 5 and 2.\n3 * 5 = 15\n15 - 2 = 13\n<answer>3 * 5 - 2</answer>",
                  "I need to make 13 from 3, 5 and 2."),
    "mbpp": ({"id": "b", "task": "mbpp", "question": "Write a function to find the larger of two numbers.",
              "answer": "", "solution": "", "tests": ["assert bigger(2, 3) == 3", "assert bigger(7, 1) == 7"],
              "meta": {}},
             "Compare the two numbers and return the larger one.\n```python\ndef bigger(a, b):\n"
             "    \"\"\"The larger of a and b (a on ties).\"\"\"\n    if a >= b:\n        return a\n    return b\n```",
             "Compare the two numbers and return the larger one."),
}
#: the shape of each task's final-answer line (the last line of every degraded CoT)
ANSWER_LINE = {"gsm8k": r"The answer is \d+\.", "math": r"So the answer is \$\\boxed\{\d+\}\$\.",
               "countdown": r"<answer>3 [-+*/] 5 [-+*/] 2</answer>", "mbpp": r"```"}


def _check_code(task, problem, cot, out):
    import ast

    from cotshape.tasks.mbpp import extract_code

    code, orig = extract_code(out), extract_code(cot)
    ast.parse(code)  # still valid Python
    lines, before = code.split("\n"), orig.split("\n")
    assert len(lines) == len(before) and lines[0] == before[0] == "def bigger(a, b):"  # order and signature kept
    assert lines[1] == before[1]  # the docstring too
    assert out.split("\n")[0] == cot.split("\n")[0]  # the prose around the code is kept


@pytest.mark.parametrize("name", sorted(LITERAL))
def test_completely_flawed_cot_keeps_problem_answer_line_and_code(name):
    """The programmatic flawed CoT of each task: the problem's numbers (its restatement) stay,
    the final-answer line is the last line in its usual shape with a wrong value, code stays
    valid Python (same lines, same signature) that fails the tests; the verifier says wrong."""
    import re

    task = get_task(name)
    problem, cot, restatement = LITERAL[name]
    assert task.verify(problem, cot).correct
    keep = keep_for(task, problem)
    assert keep.code == (name == "mbpp")
    for seed in range(4):
        out = corrupt_cot(cot, random.Random(seed), keep)
        v = task.verify(problem, out)
        assert v.parsed and not v.correct, (out, v)
        assert re.fullmatch(ANSWER_LINE[name], out.split("\n")[-1]), out
        assert restatement in out.split("\n")
        if name == "mbpp":
            _check_code(task, problem, cot, out)
        else:
            assert out.split("\n")[-1] != cot.split("\n")[3]  # the answer value changed


def test_flawed_from_corruption_uses_the_task_and_problem():
    task = get_task("countdown")
    problem, cot, restatement = LITERAL["countdown"]
    flawed = flawed_from_corruption([rec("c", cot)], lambda pid, t: not task.verify(problem, t).correct, seed=0,
                                    task=task, problems={"c": problem})
    assert restatement in flawed["c"] and flawed["c"].endswith("</answer>")
    # without the task, every number may change, the problem's own ones too
    blind = [corrupt_cot(cot, random.Random(s)) for s in range(5)]
    assert any(restatement not in b for b in blind)


@pytest.mark.parametrize("name", sorted(LITERAL))
def test_step_degradation_keeps_answer_line_last_and_code_valid(name):
    import re

    task = get_task(name)
    problem, cot, restatement = LITERAL[name]
    keep = keep_for(task, problem)
    for seed in range(4):
        out = degrade_steps(cot, 1, random.Random(seed), keep)
        assert out != cot
        if name == "mbpp":
            _check_code(task, problem, cot, out)
            continue
        assert re.fullmatch(ANSWER_LINE[name], out.split("\n")[-1])
        assert task.verify(problem, out).correct  # the answer is kept: only the reasoning is flawed
        assert restatement in out.split("\n")  # a step with a derived number is corrupted first


def test_step_k_sets_are_nested():
    """The steps corrupted at k are among those corrupted at k + 1 (one seeded order per problem)."""
    cot = "We start with 10.\nDouble it: 20.\nAdd 5: 25.\nHalve it: 12.5\nThe answer is 12.5."
    lines = cot.split("\n")
    good = [rec(f"p{i}", cot) for i in range(6)]
    changed = {}
    for k in (1, 2, 3):
        out = make_step_degraded(good, k, seed=0, task=get_task("gsm8k"), problems={})
        changed[k] = [{i for i, (a, b) in enumerate(zip(r["completion"].split("\n"), lines, strict=True)) if a != b}
                      for r in out]
        assert all(len(c) == k for c in changed[k]) and all(r["degraded_steps"] == k for r in out)
    for p in range(6):
        assert changed[1][p] < changed[2][p] < changed[3][p]
        assert 4 not in changed[3][p]  # never the answer line


def test_corrupt_code_keeps_syntax_and_signature():
    import ast

    from cotshape.data.degrade import corrupt_code

    code = ("import math\n\ndef area(r, scale=2):\n    \"\"\"Area.\"\"\"\n    if r < 0 or scale == 0:\n"
            "        return None\n    return math.pi * r ** 2 + scale - 1\n")
    for seed in range(5):
        out, n = corrupt_code(code, random.Random(seed))
        ast.parse(out)
        assert n > 0 and out != code
        a, b = out.split("\n"), code.split("\n")
        assert a[:4] == b[:4] and len(a) == len(b)  # import, def line (default kept), docstring
        assert "**" in a[6]  # untouched operators stay
        one, m = corrupt_code(code, random.Random(seed), lines=1)
        assert m >= 1 and sum(x != y for x, y in zip(one.split("\n"), b, strict=True)) == 1
    assert corrupt_code("this is not python (", random.Random(0)) == ("this is not python (", 0)
