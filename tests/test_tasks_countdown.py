"""Countdown: <answer> extraction, whitelisted exact arithmetic, the solver, H, loaders."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotshape.tasks import get_task
from cotshape.tasks.countdown import derivation, evaluate_expression, extract_answer, grade, solve

DATA = Path(__file__).parent / "data"
TASK = get_task("countdown")


def problem(numbers: list[int], target: int) -> dict:
    return {"id": "p", "task": "countdown", "question": "q", "answer": "", "solution": "", "tests": [],
            "meta": {"numbers": numbers, "target": target}}


P = problem([1, 2, 3, 4], 24)


@pytest.mark.parametrize(
    ("expr", "numbers", "target"),
    [
        ("(1 + 2 + 3) * 4", [1, 2, 3, 4], 24),
        ("4 * (3 + 2 + 1)", [1, 2, 3, 4], 24),
        ("4*3*2/1", [1, 2, 3, 4], 24),
        ("-(2 - 9) * 5", [2, 9, 5], 35),
        ("(95 - 63) * 96 / 48", [95, 63, 96, 48], 64),
    ],
)
def test_right_expressions(expr, numbers, target):
    v = TASK.verify(problem(numbers, target), f"reasoning...\n<answer>{expr}</answer>")
    assert (v.correct, v.parsed, v.extracted) == (True, True, expr), v


@pytest.mark.parametrize(
    ("expr", "reason"),
    [
        ("4 * 3 * 2", r"does not use \[1\]"),
        ("4 * 3 * 2 * 1 * 1", r"uses \[1\] not given"),
        ("4 * 3 * 2 + 1", "evaluates to 25, not 24"),
        ("x * 24 + 1 + 2 + 3 + 4", "Name is not allowed"),
        ("abs(1) * 2 * 3 * 4", "Call is not allowed"),
        ("2 ** 3 * 3 * 1 + 4 - 4", "Pow is not allowed"),
        ("(1).real * 2 * 3 * 4", "Attribute is not allowed"),
        ("__import__('os').system('true')", "not allowed"),
        ("1.0 * 2 * 3 * 4", "Constant is not allowed"),
        ("4 // 1 * 3 * 2", "FloorDiv is not allowed"),
        ("[1, 2, 3, 4]", "List is not allowed"),
        ("1 + 2 +", "not an expression"),
        ("4 * 3 * 2 / (1 - 1)", None),  # 1 is used twice and division by zero: either is wrong
    ],
)
def test_wrong_expressions(expr, reason):
    v = TASK.verify(P, f"<answer>{expr}</answer>")
    assert (v.correct, v.parsed) == (False, True)
    if reason:
        assert re.search(reason, v.reason), v.reason


def test_division_by_zero_is_wrong():
    ok, reason = grade("3 / (2 - 2) + 4", [2, 2, 3, 4], 24)
    assert (ok, reason) == (False, "division by zero")


def test_exact_rational_arithmetic():
    # 8 / (3 - 8/3) = 24 only with exact fractions
    assert grade("8 / (3 - 8 / 3)", [3, 3, 8, 8], 24)[0]
    assert evaluate_expression("1/3 + 1/3 + 1/3")[0] == Fraction(1)


def test_unicode_operators_are_accepted():
    assert grade("(1 + 2 + 3) × 4", [1, 2, 3, 4], 24)[0]


@pytest.mark.parametrize("completion", ["", "24", "<answer></answer>", "<answer>1+2", "the answer is 1+2+3*4"])
def test_no_answer_tag_is_unparsed(completion):
    v = TASK.verify(P, completion)
    assert (v.correct, v.parsed) == (False, False)


def test_last_answer_tag_wins_and_equation_is_accepted():
    assert extract_answer("<answer>1</answer> ... <answer>(1+2+3)*4 = 24</answer>") == "(1+2+3)*4"


def test_deep_nesting_does_not_crash():
    v = TASK.verify(P, "<answer>" + "(" * 5000 + "1" + ")" * 5000 + "</answer>")
    assert (v.correct, v.parsed) == (False, True)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789+-*/()<>answer/ .x_")), max_size=80))
def test_verify_never_raises(text):
    assert isinstance(TASK.verify(P, f"<answer>{text}</answer>").correct, bool)
    assert isinstance(TASK.verify(P, text).parsed, bool)


@pytest.mark.parametrize(("numbers", "target"), [([1, 2, 3, 4], 24), ([3, 3, 8, 8], 24), ([44, 19, 35], 98)])
def test_solve_finds_a_valid_expression(numbers, target):
    expr = solve(numbers, target)
    assert expr is not None and grade(expr, numbers, target)[0], expr


def test_solve_returns_none_when_impossible():
    assert solve([1, 1, 1], 5) is None


def test_derivation_is_step_by_step_and_ends_in_answer():
    h = derivation("(1 + 2 + 3) * 4", [1, 2, 3, 4], 24)
    assert h.splitlines()[1:4] == ["Step 1: 1 + 2 = 3", "Step 2: 3 + 3 = 6", "Step 3: 6 * 4 = 24"]
    assert h.endswith("<answer>(1 + 2 + 3) * 4</answer>")


def test_hub_loader_solves_and_splits_deterministically():
    src = str(DATA / "countdown")
    train, test = TASK.load("train", source=src), TASK.load("test", source=src)
    assert train and test
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    assert all(p["meta"]["index"] != 2 for p in train + test)  # [1, 1, 1] -> 5 has no solution
    for p in train + test:
        assert TASK.verify(p, TASK.human_completion(p)).correct, p
    assert TASK.load("train", source=src) == train


def test_offline_is_deterministic_disjoint_and_solved():
    train = TASK.load("train", limit=12, seed=2)
    assert train == TASK.load("train", limit=12, seed=2)
    test = TASK.load("test", limit=4, seed=2)
    assert not {p["question"] for p in train} & {p["question"] for p in test}
    for p in train:
        assert 3 <= len(p["meta"]["numbers"]) <= 4
        assert TASK.verify(p, TASK.human_completion(p)).correct, p


def test_prompt_names_numbers_target_and_format():
    msg = TASK.chat_messages(problem([5, 7, 9], 26))[0]["content"]
    assert "[5, 7, 9]" in msg and "26" in msg and "<answer>" in msg and "exactly once" in msg
