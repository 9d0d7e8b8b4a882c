"""Step-level correctness (cotshape.data.steps) on literal chains of thought."""

from __future__ import annotations

import json
import random
import time

import pytest

from cotshape.data.steps import MAX_TEXT_CHARS, Step, find_steps, step_stats


def claims(text: str) -> list[tuple[str, str, bool]]:
    return [(s.lhs, s.rhs, s.correct) for s in find_steps(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("48/2 = 24", [("48/2", "24", True)]),
        ("3 + 4 + 5 = 12", [("3 + 4 + 5", "12", True)]),
        ("$5 x 3 = $15", [("$5 x 3", "$15", True)]),
        ("12 * 2 = 24 apples", [("12 * 2", "24", True)]),
        ("1,200 - 200 = 1,000", [("1,200 - 200", "1,000", True)]),
        ("(3 + 4) * 2 = 14", [("(3 + 4) * 2", "14", True)]),
        ("2.5 * 4 = 10.0", [("2.5 * 4", "10.0", True)]),
        ("Step 1: 3 + 4 = 7", [("3 + 4", "7", True)]),
        ("3 × 4 = 12 and 3 ÷ 4 = 0.75", [("3 × 4", "12", True), ("3 ÷ 4", "0.75", True)]),
        ("3 - 5 = -2", [("3 - 5", "-2", True)]),
        ("-3 + 5 = 2", [("-3 + 5", "2", True)]),
        ("24/2 = 12/day", [("24/2", "12", True)]),
        ("**3 + 4 = 7**", [("3 + 4", "7", True)]),
        ("\\(3 \\times 4 = 12\\)", [("3 \\times 4", "12", True)]),
    ],
)
def test_forms_found_and_right(text, expected):
    assert claims(text) == expected


def test_wrong_step():
    assert claims("She has 3 + 4 = 8 apples.") == [("3 + 4", "8", False)]


def test_step_keeps_text_as_written():
    assert find_steps("So 1,200 - 200 = 1,000 dollars.") == [
        Step(text="1,200 - 200 = 1,000", lhs="1,200 - 200", rhs="1,000", correct=True)
    ]


@pytest.mark.parametrize(
    "text",
    [
        "The answer is 5.",
        "x = 5",
        "answer = 12",
        "2x = 10",
        "2 * x = 10",
        "",
        "20% of 50 = 10",  # percent: skipped, not a step
        "50 * 20% = 10",
        "3 * 4 = 2 * 6",  # an expression equal to an expression has no claimed result
        "12 = 3 * 4",
        "2(3 + 4) = 14",  # implicit multiplication
        "2 ** 3 = 8",
        "3 // 2 = 1",
        "half of 10 = 5",
    ],
)
def test_no_steps(text):
    assert find_steps(text) == []


def test_non_text_has_no_steps():
    assert find_steps(None) == []  # type: ignore[arg-type]


def test_bullet_dash_is_not_a_minus_sign():
    assert claims("- 48 / 2 = 24") == [("48 / 2", "24", True)]


@pytest.mark.parametrize(
    ("text", "correct"),
    [
        ("10/3 = 3.33", True),
        ("10/3 = 3.3", True),
        ("10/3 = 3.4", False),
        ("10/3 = 3", False),  # no decimals written: exact
        ("2/3 = 0.67", True),
        ("2/3 = 0.66", False),
        ("1/8 = 0.12", True),  # a tie rounds either way
        ("1/8 = 0.13", True),
        ("10 / 4 = 2.50", True),
    ],
)
def test_decimal_claims_are_rounded_to_the_places_written(text, correct):
    assert [s.correct for s in find_steps(text)] == [correct]


def test_division_by_zero_is_a_wrong_step():
    assert claims("5 / 0 = 0") == [("5 / 0", "0", False)]


def test_chain_splits_into_steps():
    assert claims("3 + 4 = 7 + 5 = 12") == [("3 + 4", "7", True), ("7 + 5", "12", True)]


def test_chain_with_wrong_link():
    assert claims("3 + 4 = 8 + 5 = 13") == [("3 + 4", "8", False), ("8 + 5", "13", True)]


def test_chain_rewrite_is_not_a_step():
    assert claims("(3 + 4) * 2 = 7 * 2 = 14") == [("7 * 2", "14", True)]


def test_chain_middle_neither_total_nor_rewrite_is_wrong():
    assert claims("3 * 4 = 8 * 2 = 16") == [("3 * 4", "8", False), ("8 * 2", "16", True)]


def test_calculator_annotation_counted_once():
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips in May."
    assert find_steps(text) == [Step(text="48/2=24", lhs="48/2", rhs="24", correct=True)]


def test_calculator_annotation_after_currency():
    assert claims("She earns 12/60 = $<<12/60=0.2>>0.2 per minute.") == [("12/60", "0.2", True)]


def test_wrong_calculator_annotation():
    assert claims("He pays 3*7 = <<3*7=20>>20 dollars.") == [("3*7", "20", False)]


def test_countdown_derivation():
    text = "We need to reach 24 using 3, 4, 2.\nStep 1: 3 * 4 = 12\nStep 2: 12 * 2 = 24\n<answer>3*4*2</answer>"
    assert claims(text) == [("3 * 4", "12", True), ("12 * 2", "24", True)]


GSM8K_WRONG = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "In April and May she sold 48+24 = <<48+24=72>>72 clips.\n"
    "Each clip costs $2, so she earned 72*2 = <<72*2=154>>154 dollars.\n"
    "#### 154"
)


def test_gsm8k_wrong_answer_cot_keeps_its_right_steps():
    assert [s.correct for s in find_steps(GSM8K_WRONG)] == [True, True, False]


def test_step_stats_aggregates():
    stats = step_stats([GSM8K_WRONG, "The answer is 5.", "3 + 4 = 7 + 5 = 12", "10/3 = 3.4"])
    assert stats == {
        "cots": 4,
        "cots_with_steps": 3,
        "steps": 6,
        "correct_steps": 4,
        "step_accuracy": 4 / 6,
        "mean_steps_per_cot": 6 / 4,
    }
    json.dumps(stats)


def test_step_stats_empty():
    assert step_stats([]) == {"cots": 0, "cots_with_steps": 0, "steps": 0, "correct_steps": 0,
                              "step_accuracy": None, "mean_steps_per_cot": None}
    assert step_stats(["no arithmetic here"])["step_accuracy"] is None


def test_overlong_expression_not_checked():
    assert find_steps("1+" * 150 + "1 = 151") == []


def test_hostile_input_is_bounded():
    rng = random.Random(0)
    noise = "".join(rng.choice("0123456789+-*/=() ") for _ in range(MAX_TEXT_CHARS))
    for text in (noise, "1+1=" * 25_000, "(" * MAX_TEXT_CHARS, "9" * MAX_TEXT_CHARS + "+1=1"):
        start = time.perf_counter()
        find_steps(text)
        assert time.perf_counter() - start < 5  # 0.3 s at most here; generous for shared CPUs


def test_text_cut_at_the_cap():
    assert find_steps(" " * MAX_TEXT_CHARS + "3 + 4 = 7") == []
    assert len(find_steps(" " * (MAX_TEXT_CHARS - 9) + "3 + 4 = 7")) == 1
