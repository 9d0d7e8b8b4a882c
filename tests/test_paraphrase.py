"""Paraphrase policy on literal model outputs."""

from __future__ import annotations

import pytest

from cotshape.data.paraphrase import paraphrase_messages, paraphrase_seed, paraphrase_set
from cotshape.tasks import get_task

TASK = get_task("gsm8k")


def prob(pid, q, a):
    return {"id": pid, "task": "gsm8k", "question": q, "answer": a, "solution": f"It is {a}.\n#### {a}",
            "tests": [], "meta": {}}


PROBLEMS = [prob("a", "2+2?", "4"), prob("b", "3+3?", "6")]


ATTEMPT = {paraphrase_seed(0, p["id"], a): a for p in PROBLEMS for a in range(3)}


def scripted(replies):
    """A "model" answering from ``replies[(question, attempt)]``; records the attempts asked."""
    calls = []

    def generate(prompts, seeds):
        attempts = [ATTEMPT[s] for s in seeds]
        calls.append(sorted(set(attempts)))
        return [replies[(p[0]["content"].split("\n")[1], a)] for p, a in zip(prompts, attempts, strict=True)]

    return generate, calls


def test_prompt_contains_solution_and_format():
    msg = paraphrase_messages(TASK, PROBLEMS[0])[0]["content"]
    assert "2+2?" in msg and TASK.human_completion(PROBLEMS[0]) in msg and "own words" in msg


def test_retry_then_keep_original():
    gen, calls = scripted({("2+2?", 0): "The answer is 5.", ("3+3?", 0): "Three and three: The answer is 6.",
                           ("2+2?", 1): "still wrong, The answer is 3."})
    recs, m = paraphrase_set(TASK, PROBLEMS, gen, retries=1, on_failure="keep_original", seed=0)
    assert calls == [[0], [1]]  # one retry, for the failed problem only
    assert [(r["problem_id"], r["paraphrased"]) for r in recs] == [("a", False), ("b", True)]
    assert recs[0]["completion"] == TASK.human_completion(PROBLEMS[0])
    assert m["success_rate"] == 0.5 and m["kept_original"] == 1 and m["dropped"] == 0


def test_drop_policy():
    gen, _ = scripted({("2+2?", 0): "no idea", ("3+3?", 0): "The answer is 6."})
    recs, m = paraphrase_set(TASK, PROBLEMS, gen, retries=0, on_failure="drop")
    assert [r["problem_id"] for r in recs] == ["b"] and m["dropped"] == 1 and m["size"] == 1
    assert recs[0]["set"] == "P" and recs[0]["prompt"] == TASK.chat_messages(PROBLEMS[1])


def test_a_paraphrase_cut_at_the_budget_fails_unless_allowed():
    """A base model's paraphrase that loops until max_new_tokens passes the verifier on its first
    answer line; with allow_truncated false (the default) it fails and is retried like a wrong one."""
    from cotshape.generation.base import Completion

    loop = "It is 4. The answer is 4.\nSolution: It is 4. The answer is 4.\nSolution: It is"
    replies = {("2+2?", 0): Completion(loop, 32, "length"), ("2+2?", 1): Completion("Two and two: The answer is 4.", 9, "stop"),
               ("3+3?", 0): Completion(loop.replace("4", "6"), 32, "length"), ("3+3?", 1): Completion(loop.replace("4", "6"), 32, "length")}
    gen, calls = scripted(replies)
    recs, m = paraphrase_set(TASK, PROBLEMS, gen, retries=1, seed=0)
    assert calls == [[0], [1]]  # both cut at attempt 0: both retried
    assert [(r["problem_id"], r["paraphrased"]) for r in recs] == [("a", True), ("b", False)]
    assert recs[0]["completion"] == "Two and two: The answer is 4." and m["truncated"] == 3 and m["success_rate"] == 0.5
    gen, _ = scripted(replies)
    recs, m = paraphrase_set(TASK, PROBLEMS, gen, retries=1, seed=0, allow_truncated=True)
    assert [r["paraphrased"] for r in recs] == [True, True] and m["truncated"] == 0 and recs[0]["completion"] == loop


def test_bad_policy():
    with pytest.raises(ValueError, match="on_failure"):
        paraphrase_set(TASK, PROBLEMS, lambda p, s: [], on_failure="ignore")


def test_seeds_follow_the_problem_not_its_position():
    seen = {}

    def generate(prompts, seeds):
        for p, s in zip(prompts, seeds, strict=True):
            seen.setdefault(p[0]["content"], set()).add(s)
        return ["The answer is 0."] * len(prompts)

    paraphrase_set(TASK, PROBLEMS, generate, retries=1)
    paraphrase_set(TASK, PROBLEMS[::-1], generate, retries=1)
    paraphrase_set(TASK, PROBLEMS[1:], generate, retries=1)
    # two attempts per problem, each with its own seed, the same in every call
    assert all(len(s) == 2 for s in seen.values()) and len(set().union(*seen.values())) == 4


def _paraphrase_stage():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "stages" / "paraphrase.py"
    spec = importlib.util.spec_from_file_location("_stage_paraphrase", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stage_scores_the_paraphrases_against_their_human_solutions(tiny_model_dir):
    """closeness_to_student: the student's loss on the paraphrased records and on H of the same
    problems; a "paraphrase" that copies H sits exactly as close (H - P = 0), another text does not;
    records that fell back to H are left out."""
    from pathlib import Path

    from cotshape.core.config import load_params

    p = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    p.base.device, p.base.dtype, p.report.n_boot = "cpu", "float32", 200
    p.base.prompt_format = "chat"  # no problems file here (plain prompts are built from it)
    stage = _paraphrase_stage()
    copy, _ = scripted({("2+2?", 0): TASK.human_completion(PROBLEMS[0]), ("3+3?", 0): TASK.human_completion(PROBLEMS[1])})
    recs, _ = paraphrase_set(TASK, PROBLEMS, copy, retries=0, seed=0)
    c = stage.closeness_to_student(p, TASK, PROBLEMS, recs, str(tiny_model_dir), None)
    assert c["problems"] == 2 and c["paraphraser"] == "student"
    assert c["loss_P"] == pytest.approx(c["loss_H"]) and c["H_minus_P"] == pytest.approx(0.0, abs=1e-9)
    other, _ = scripted({("2+2?", 0): "Two and two make four. The answer is 4.", ("3+3?", 0): "no idea"})
    recs, m = paraphrase_set(TASK, PROBLEMS, other, retries=0, seed=0)
    assert m["fallback_share"] == 0.5
    c = stage.closeness_to_student(p, TASK, PROBLEMS, recs, str(tiny_model_dir), None)
    assert c["problems"] == 1 and c["loss_P"] != pytest.approx(c["loss_H"])
    assert c["H_minus_P"] == pytest.approx(c["loss_H"] - c["loss_P"])
    lo, hi = c["H_minus_P_ci95"]
    assert lo <= c["H_minus_P"] <= hi
    none, _ = scripted({("2+2?", 0): "no", ("3+3?", 0): "no"})
    recs, _ = paraphrase_set(TASK, PROBLEMS, none, retries=0, seed=0)
    assert stage.closeness_to_student(p, TASK, PROBLEMS, recs, str(tiny_model_dir), None)["loss_P"] is None
