"""Evaluation: both accuracy definitions on literal verdicts, and greedy evaluation end to end
(real gsm8k task and verifier; the tiny random Llama through the transformers backend)."""

from __future__ import annotations

import pytest

from cotshape.core.records import make_problem
from cotshape.core.stats import wilson_interval
from cotshape.evaluation.evaluate import OUTPUT_FIELDS, evaluate, score
from cotshape.generation.base import Backend, Completion, SamplingParams
from cotshape.tasks import Verdict, get_task

PROBLEMS = [
    make_problem("g1", "gsm8k", "Tom has 3 apples and buys 4 more. How many apples?", "7", "3 + 4 = 7\n#### 7"),
    make_problem("g2", "gsm8k", "A box holds 6 eggs. How many eggs in 2 boxes?", "12", "6 * 2 = 12\n#### 12"),
    make_problem("g3", "gsm8k", "Sam had 10 coins and lost 4. How many are left?", "6", "10 - 4 = 6\n#### 6"),
    make_problem("g4", "gsm8k", "Ann reads 5 pages a day for 3 days. How many pages?", "15", "5 * 3 = 15\n#### 15"),
    make_problem("g5", "gsm8k", "A pen costs 2 dollars. What do 9 pens cost?", "18", "2 * 9 = 18\n#### 18"),
]


class ReplayBackend(Backend):
    """Replays literal completions keyed by the question in the prompt, so the verifier sees
    known text (a random tiny model never writes a correct answer). Records every call."""

    name = "replay"

    def __init__(self, by_question: dict[str, str]):
        self.by_question = by_question
        self.calls: list[tuple[int, SamplingParams]] = []

    def generate(self, prompts, params, progress=None, seeds=None):
        self.calls.append((len(prompts), params))
        out = []
        for messages in prompts:
            question = next(q for q in self.by_question if q in messages[-1]["content"])
            text = self.by_question[question]
            if progress:
                progress(len(text.split()))
            out.append([Completion(text=text, num_tokens=len(text.split()), finish_reason="stop")])
        return out


REPLIES = {
    PROBLEMS[0]["question"]: "3 + 4 = 7. The answer is 7.",  # correct
    PROBLEMS[1]["question"]: "6 * 2 = 14. The answer is 14.",  # parsed, wrong
    PROBLEMS[2]["question"]: "I am not sure how to solve this.",  # no answer at all
    PROBLEMS[3]["question"]: "5 * 3 = 15\n#### 15",  # correct
    PROBLEMS[4]["question"]: "Let me think about pens.",  # no answer at all
}


# ---- score ------------------------------------------------------------------------------
def test_score_both_definitions_with_unparsed_answers():
    verdicts = [
        Verdict(True, True, "7", "equal"),
        Verdict(False, True, "14", "wrong"),
        Verdict(False, False, None, "no final answer found"),
        {"correct": True, "parsed": True, "extracted": "15", "reason": "equal"},
        {"correct": False, "parsed": False},
    ]
    assert score(verdicts) == {
        "n": 5,
        "n_correct": 2,
        "n_parsed": 3,
        "accuracy": 0.4,
        "accuracy_parsed": 2 / 3,
        "parse_rate": 0.6,
        "no_parsed_answers": False,
        "ci95": list(wilson_interval(2, 5)),
    }
    assert score(verdicts)["ci95"] == pytest.approx([0.1176, 0.7693], abs=1e-4)  # Wilson 95 % of 2/5


def test_score_nothing_parsed_is_zero_and_flagged():
    m = score([Verdict(False, False, None, "no answer"), {"correct": False, "parsed": False}])
    assert (m["accuracy"], m["accuracy_parsed"], m["parse_rate"], m["no_parsed_answers"]) == (0.0, 0.0, 0.0, True)
    assert m["ci95"][0] == 0.0 and m["ci95"][1] == pytest.approx(0.6576, abs=1e-4)  # 0 of 2 is not certainly 0


def test_score_code_task_reports_pass_at_1():
    m = score([Verdict(True, True, "code", "ok"), Verdict(False, True, "code", "assert failed")] * 2, code=True)
    assert m["pass@1"] == m["accuracy"] == 0.5


def test_score_has_no_pass_at_1_for_answer_tasks():
    assert "pass@1" not in score([Verdict(True, True, "7", "ok")])


def test_score_refuses_correct_but_unparsed():
    with pytest.raises(ValueError, match=r"verdict 1: correct=True but parsed=False"):
        score([Verdict(False, True, "1", ""), {"correct": True, "parsed": False}])


def test_score_names_the_verdict_missing_a_field():
    with pytest.raises(ValueError, match=r"verdict 0: missing field\(s\) parsed"):
        score([{"correct": False}])


def test_score_refuses_non_boolean_flags():
    with pytest.raises(ValueError, match=r"verdict 0: 'correct' and 'parsed' must be booleans"):
        score([{"correct": 1, "parsed": 1}])


def test_score_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no verdicts to score"):
        score([])


# ---- evaluate with literal completions ----------------------------------------------------
def test_evaluate_grades_records_with_the_task_verifier():
    records, metrics = evaluate(get_task("gsm8k"), PROBLEMS, ReplayBackend(REPLIES), max_new_tokens=64, progress=False)
    assert [(r["problem_id"], r["correct"], r["parsed"], r["extracted"], r["gold"]) for r in records] == [
        ("g1", True, True, "7", "7"),
        ("g2", False, True, "14", "12"),
        ("g3", False, False, None, "6"),
        ("g4", True, True, "15", "15"),
        ("g5", False, False, None, "18"),
    ]
    assert (metrics["n"], metrics["n_correct"], metrics["n_parsed"]) == (5, 2, 3)
    assert metrics["accuracy"] == 0.4 and metrics["accuracy_parsed"] == 2 / 3


def test_evaluate_record_fields_and_prompt():
    task = get_task("gsm8k")
    records, _ = evaluate(task, PROBLEMS[:1], ReplayBackend(REPLIES), max_new_tokens=64, progress=False)
    assert list(records[0]) == list(OUTPUT_FIELDS)
    assert records[0]["prompt"] == task.chat_messages(PROBLEMS[0])
    assert records[0]["completion"] == REPLIES[PROBLEMS[0]["question"]]
    assert (records[0]["num_tokens"], records[0]["finish_reason"]) == (9, "stop")


def test_evaluate_decodes_greedily_in_chunks_of_batch_size():
    backend = ReplayBackend(REPLIES)
    evaluate(get_task("gsm8k"), PROBLEMS, backend, max_new_tokens=48, batch_size=2, progress=False)
    assert [n for n, _ in backend.calls] == [2, 2, 1]
    assert all(p.greedy and p.n == 1 and p.max_new_tokens == 48 for _, p in backend.calls)


def test_evaluate_hands_every_prompt_over_at_once_by_default():
    # one call keeps a continuous-batching backend full until the queue runs dry
    backend = ReplayBackend(REPLIES)
    evaluate(get_task("gsm8k"), PROBLEMS, backend, max_new_tokens=48, progress=False)
    assert [n for n, _ in backend.calls] == [5]


def test_evaluate_refuses_duplicate_problem_ids():
    with pytest.raises(ValueError, match=r"duplicate problem id 'g1'"):
        evaluate(get_task("gsm8k"), [PROBLEMS[0], PROBLEMS[0]], ReplayBackend(REPLIES), max_new_tokens=8, progress=False)


def test_evaluate_refuses_an_empty_test_set():
    with pytest.raises(ValueError, match=r"no test problems to evaluate for task 'gsm8k'"):
        evaluate(get_task("gsm8k"), [], ReplayBackend(REPLIES), max_new_tokens=8, progress=False)


def test_evaluate_reports_a_backend_that_drops_prompts():
    class Short(ReplayBackend):
        def generate(self, prompts, params, progress=None, seeds=None):
            return super().generate(prompts, params, progress, seeds)[:-1]

    with pytest.raises(RuntimeError, match=r"backend 'replay' returned \[1\] completions for 2 prompts"):
        evaluate(get_task("gsm8k"), PROBLEMS[:2], Short(REPLIES), max_new_tokens=8, progress=False)


# ---- evaluate with a real model -----------------------------------------------------------
def test_evaluate_tiny_model_through_transformers_backend(tiny_model_dir):
    from cotshape.generation import get_backend

    backend = get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", batch_size=4)
    records, metrics = evaluate(get_task("gsm8k"), PROBLEMS, backend, max_new_tokens=12, batch_size=3, progress=False)
    assert [r["problem_id"] for r in records] == ["g1", "g2", "g3", "g4", "g5"]
    assert all(0 <= r["num_tokens"] <= 12 and r["finish_reason"] in ("stop", "length") for r in records)
    assert all(isinstance(r["completion"], str) for r in records)
    assert metrics["n"] == 5
    assert metrics["n_parsed"] == sum(r["parsed"] for r in records)
    assert metrics["n_correct"] == sum(r["correct"] for r in records)



def test_code_task_is_scored_with_pass_at_1_by_running_its_tests():
    problem = make_problem(
        "m1", "mbpp", "Write a function add(a, b) that returns a + b.", "", "def add(a, b):\n    return a + b",
        tests=["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
    )
    task = get_task("mbpp")
    reply = {problem["question"]: "```python\ndef add(a, b):\n    return a + b\n```"}
    records, metrics = evaluate(task, [problem], ReplayBackend(reply), max_new_tokens=64, progress=False)
    assert records[0]["correct"] is True, records[0]["reason"]
    assert metrics["pass@1"] == metrics["accuracy"] == 1.0


def test_summarize_runs_takes_the_run_as_the_unit():
    from cotshape.evaluation.evaluate import score, summarize_runs

    def right(k, n=100):
        return [i < k for i in range(n)]

    def run(k, n=100):
        return score([{"correct": c, "parsed": True} for c in right(k, n)])

    def runs(*ks):
        return summarize_runs([run(k) for k in ks], [right(k) for k in ks])

    one = summarize_runs([run(30)])
    assert one["runs"] == 1 and one["ci95"] == run(30)["ci95"] and one["ci95_is"].startswith("test problems")
    agree = runs(30, 31, 29)
    spread = runs(10, 30, 50)
    assert agree["accuracy"] == pytest.approx(0.30) and spread["accuracy"] == pytest.approx(0.30)
    assert agree["runs"] == 3 and len(agree["per_run"]) == 3
    width = lambda m: m["ci95"][1] - m["ci95"][0]  # noqa: E731
    assert width(spread) > width(agree) > 0
    # runs that agree: still about as wide as the runs' own test-problem noise, not narrower
    assert width(agree) >= 0.5 * width(run(30))
    assert 0.0 <= spread["ci95"][0] and spread["ci95"][1] <= 1.0
    with pytest.raises(ValueError, match="no runs"):
        summarize_runs([])
    with pytest.raises(ValueError, match="2 runs need their correctness"):
        summarize_runs([run(1), run(2)])
