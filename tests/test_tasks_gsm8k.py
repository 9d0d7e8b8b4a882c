"""GSM8K: final-number extraction, numeric grading, hub and offline loaders."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cotshape.tasks import get_task
from cotshape.tasks.gsm8k import extract_answer, human_solution

DATA = Path(__file__).parent / "data"
TASK = get_task("gsm8k")


def problem(answer: str) -> dict:
    return {"id": "p", "task": "gsm8k", "question": "q", "answer": answer, "solution": "", "tests": [], "meta": {}}


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("48/2 = 24\n#### 72", "72"),
        ("So she makes 18 dollars. The answer is 18.", "18"),
        ("The answer is: **-3**", "-3"),
        ("The answer is −3.", "-3"),
        ("We get $\\boxed{42}$", "42"),
        ("first 5, then 7, finally 12 apples", "12"),
        ("Total: 1,000 dollars", "1,000"),
        ("#### 5\nThe answer is 6.", "5"),  # '####' wins over later text
        ("60-12", "12"),  # a binary minus is not a sign
        ("cost is $2.50", "2.50"),
    ],
)
def test_extract_answer(completion, expected):
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("completion", ["", "I do not know.", "no digits here at all"])
def test_no_number_is_unparsed(completion):
    v = TASK.verify(problem("5"), completion)
    assert (v.correct, v.parsed, v.extracted) == (False, False, None)


@pytest.mark.parametrize(
    ("a", "b"),
    [("1000", "1,000"), ("-3", "−3"), ("2.50", "2.5"), ("18", "18.0"), ("5", "$5"), ("0.5", ".5")],
)
def test_numeric_equivalence_both_ways(a, b):
    assert TASK.verify(problem(a), f"The answer is {b}.").correct
    assert TASK.verify(problem(b), f"The answer is {a}.").correct


@pytest.mark.parametrize(("gold", "said"), [("18", "17"), ("-3", "3"), ("1000", "100"), ("2.5", "2.05")])
def test_wrong_number_is_parsed_but_wrong(gold, said):
    v = TASK.verify(problem(gold), f"The answer is {said}.")
    assert (v.correct, v.parsed) == (False, True)
    assert "!=" in v.reason


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_extract_and_verify_never_raise(text):
    extract_answer(text)
    v = TASK.verify(problem("12"), text)
    assert isinstance(v.correct, bool)


def test_verify_of_non_string_is_unparsed():
    assert TASK.verify(problem("1"), None).parsed is False  # type: ignore[arg-type]


def test_human_solution_ends_in_the_prompted_format():
    h = human_solution("Natalia sold 48/2 = <<48/2=24>>24 clips.\n#### 72")
    assert h == "Natalia sold 48/2 = 24 clips.\nThe answer is 72."


def test_hub_loader_reads_the_hub_layout():
    train = TASK.load("train", source=str(DATA / "gsm8k"))
    assert [p["id"] for p in train] == ["gsm8k-train-00000", "gsm8k-train-00001", "gsm8k-train-00002"]
    assert train[0]["answer"] == "72" and train[2]["answer"] == "-300"
    assert train[0]["solution"].endswith("#### 72")
    assert TASK.load("test", source=str(DATA / "gsm8k"), limit=1)[0]["answer"] == "18"


def test_hub_human_solutions_grade_correct():
    for p in TASK.load("train", source=str(DATA / "gsm8k")):
        assert TASK.verify(p, TASK.human_completion(p)).correct, p["id"]


def test_offline_is_deterministic_for_a_seed():
    a = TASK.load("train", limit=5, seed=3)
    assert a == TASK.load("train", limit=5, seed=3)
    assert a != TASK.load("train", limit=5, seed=4)
    assert [p["id"] for p in a] == [f"gsm8k-train-{i:05d}" for i in range(5)]


def test_offline_limit_is_a_prefix():
    assert TASK.load("test", limit=3, seed=0) == TASK.load("test", limit=6, seed=0)[:3]


def test_offline_train_and_test_do_not_overlap():
    train = {p["question"] for p in TASK.load("train", limit=40, seed=0)}
    test = {p["question"] for p in TASK.load("test", limit=10, seed=0)}
    assert len(train) == 40 and len(test) == 10 and not train & test


def test_offline_human_solutions_grade_correct():
    for p in TASK.load("train", limit=10, seed=0):
        h = TASK.human_completion(p)
        assert h.rsplit("\n", 1)[-1].startswith("The answer is ")
        assert TASK.verify(p, h).correct, p["id"]


def test_prompt_asks_for_the_answer_format():
    p = TASK.load("test", limit=1)[0]
    msgs = TASK.chat_messages(p)
    assert msgs[0]["role"] == "user" and "The answer is N." in msgs[0]["content"]
    assert p["question"] in TASK.base_prompt(p)
