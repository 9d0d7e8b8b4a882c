"""MBPP: code extraction, HumanEval conversion, hub loaders, grading in the real sandbox."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cotshape.execution.sandbox.api  # noqa: F401  (the grading tests below run in it)
from cotshape.tasks import get_task
from cotshape.tasks.mbpp import extract_code, humaneval_tests

DATA = Path(__file__).parent / "data"
TASK = get_task("mbpp")


def problem(tests: list[str], setup: str = "") -> dict:
    return {"id": "p", "task": "mbpp", "question": "q", "answer": "", "solution": "", "tests": tests,
            "meta": {"test_setup_code": setup}}


ADD = problem(["assert add(1, 2) == 3", "assert add(-1, 1) == 0"])


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "def f():\n    return 1"),
        ("```python\nx = 1\n```\nbetter:\n```python\nx = 2\n```", "x = 2"),
        ("```py\nx = 3\n```", "x = 3"),
        ("```\nx = 4\n```", "x = 4"),
        ("```python\ndef g():\n    return 5", "def g():\n    return 5"),  # cut off: no closing fence
        ("def h(a):\n    return a\n", "def h(a):\n    return a"),  # raw code, no fence
    ],
)
def test_extract_code(completion, expected):
    assert extract_code(completion) == expected


@pytest.mark.parametrize("completion", ["", "I cannot write this function.", "```python\n```"])
def test_no_code_is_unparsed(completion):
    v = TASK.verify(ADD, completion)
    assert (v.correct, v.parsed) == (False, False)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_extract_never_raises(text):
    assert extract_code(text) is None or isinstance(extract_code(text), str)


def test_humaneval_asserts_become_tests_calling_entry_point():
    src = 'METADATA = {}\n\n\ndef check(candidate):\n    """doc"""\n    assert candidate(1) == 2\n    assert candidate(2) == 3\n'
    assert humaneval_tests(src, "inc") == (["assert inc(1) == 2", "assert inc(2) == 3"], "")


def test_humaneval_complex_check_becomes_setup_and_single_test():
    src = "def check(candidate):\n    import math\n    assert math.isclose(candidate(1), 2)\n"
    tests, setup = humaneval_tests(src, "inc")
    assert tests == ["check(inc)"] and "def check(candidate)" in setup


def test_hub_full_config():
    train = TASK.load("train", source=str(DATA / "mbpp"))
    assert [p["id"] for p in train] == ["mbpp-train-0002", "mbpp-train-0003"]
    assert train[0]["tests"][0].startswith("assert similar_elements(")
    assert train[0]["solution"].startswith("```python\ndef similar_elements")
    assert TASK.load("test", source=str(DATA / "mbpp"))[1]["meta"]["test_setup_code"] == "K = 10"


def test_hub_sanitized_config_uses_prompt_and_test_imports():
    test = TASK.load("test", source=str(DATA / "mbpp") + ":sanitized")
    assert test[0]["question"].startswith("Write a function that returns the perimeter")
    assert test[0]["meta"]["test_setup_code"] == "import math"
    assert test[0]["meta"]["config"] == "sanitized"


def test_prompt_shows_first_test_and_asks_for_fence():
    p = TASK.load("train", source=str(DATA / "mbpp"))[0]
    msg = TASK.user_prompt(p)
    assert p["tests"][0] in msg and "```python" in msg


def test_offline_humaneval_split_is_fixed_and_disjoint():
    train, test = TASK.load("train"), TASK.load("test")
    assert len(train) + len(test) == 164
    assert not {p["meta"]["task_id"] for p in train} & {p["meta"]["task_id"] for p in test}
    assert TASK.load("test", limit=3) == test[:3]
    he0 = next(p for p in train + test if p["meta"]["task_id"] == "HumanEval/0")
    assert he0["tests"][0].startswith("assert has_close_elements(")
    assert he0["meta"]["entry_point"] == "has_close_elements"


# ---- grading runs the real sandbox -----------------------------------------------------------

def test_right_code_passes():
    v = TASK.verify(ADD, "```python\ndef add(a, b):\n    return a + b\n```")
    assert (v.correct, v.parsed) == (True, True), v.reason


def test_wrong_code_fails_with_reason():
    v = TASK.verify(ADD, "```python\ndef add(a, b):\n    return a - b\n```")
    assert (v.correct, v.parsed) == (False, True)
    assert v.reason.startswith("failed")


def test_exit_before_asserts_fails():
    v = TASK.verify(ADD, "```python\nimport sys\ndef add(a, b):\n    return 0\nsys.exit(0)\n```")
    assert not v.correct


def test_setup_code_runs_before_tests():
    p = problem(["assert add_k(1) == 11"], setup="K = 10")
    assert TASK.verify(p, "```python\ndef add_k(x):\n    return x + K\n```").correct


def test_hub_references_pass():
    for split in ("train", "test"):
        for p in TASK.load(split, source=str(DATA / "mbpp")):
            assert TASK.verify(p, TASK.human_completion(p)).correct, p["id"]


def test_humaneval_references_pass_in_batch():
    from cotshape.data.verify import verify_records

    probs = TASK.load("test", limit=12)
    out = verify_records(TASK, {p["id"]: p for p in probs},
                         [{"problem_id": p["id"], "completion": TASK.human_completion(p)} for p in probs],
                         progress=False)
    assert all(o["correct"] for o in out), [o["reason"] for o in out if not o["correct"]]
