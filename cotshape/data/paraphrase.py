"""Paraphrase human solutions into model style: the paper's P set.

A model (by default the student itself) rewrites each human solution H in its own words while
keeping the final answer. Each paraphrase is graded with the task's own verifier; a paraphrase
that loses the answer is retried with a new seed up to ``retries`` times. Seeds are keyed by
the problem id and the attempt (:func:`paraphrase_seed`), so a problem's paraphrase does not
change when other problems are added to or removed from the training set. When every attempt
fails, ``on_failure`` decides:

* ``keep_original`` — the problem keeps its human solution in P (marked ``paraphrased: False``),
  so P has the same problems as H;
* ``drop`` — the problem is left out of P.

A paraphrase cut at its token budget (``finish_reason: length``) fails too unless
``allow_truncated``: a base model asked to rewrite a solution often restates it in a loop until
the budget runs out, and the loop's first answer line would pass the verifier.

The success rate (problems whose paraphrase verified) and ``fallback_share`` (the share of P
that is H because every attempt failed) go to ``metrics/paraphrase/TASK.json``, with
``truncated`` (attempts cut at the budget and failed for that).

Length: ``max_new_tokens: auto`` gives each problem a budget that follows its human solution
(:func:`paraphrase_budget`): a fixed 128 tokens cut every long solution, so P silently fell back
to H (Countdown: 0 of 16 paraphrased). The student paraphrases in ``base.prompt_format`` (a base
student gets a plain-text request, :func:`paraphrase_prompt`); the teacher always in chat.

Example with a literal "model" that only succeeds on the second attempt::

    >>> from cotshape.tasks import get_task
    >>> task = get_task("gsm8k")
    >>> p = {"id": "q1", "task": "gsm8k", "question": "What is 2 + 2?", "answer": "4",
    ...      "solution": "2 + 2 = 4\\n#### 4", "tests": [], "meta": {}}
    >>> replies = iter(["Two plus two is five. The answer is 5.", "Adding 2 and 2 gives 4. The answer is 4."])
    >>> recs, m = paraphrase_set(task, [p], lambda prompts, seeds: [next(replies) for _ in prompts], retries=1)
    >>> recs[0]["completion"], recs[0]["paraphrased"], m["success_rate"]
    ('Adding 2 and 2 gives 4. The answer is 4.', True, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cotshape.core.errors import InputError
from cotshape.generation.base import Prompt, derive_seed
from cotshape.core.records import training_record
from cotshape.tasks.base import Messages, Problem, Task, check_prompt_format, special_prefix

#: ``generate(prompts, seeds)``: one completion per prompt, prompt ``i`` sampled with ``seeds[i]``;
#: with ``max_new_tokens: auto`` it is called as ``generate(prompts, seeds, budget)``. A completion
#: is a string or an object with ``text`` and ``finish_reason`` (a backend's ``Completion``: then a
#: paraphrase cut at the budget is recognised)
GenerateFn = Callable[..., list[str]]

#: ``max_new_tokens: auto``: budget = 2 x the human solution's tokens, rounded up to a power of two,
#: within [AUTO_MIN_TOKENS, AUTO_MAX_TOKENS]. A model restating a solution "step by step, as you
#: would explain it" writes more than the terse human text (GSM8K's H is ~100 tokens; teacher CoTs
#: of the same problems run 1.5-2x), and a budget is only a ceiling: a paraphrase that ends earlier
#: costs nothing more, while one cut short loses its answer and P falls back to H. So the floor is
#: generous: 1,024 tokens (issue #11: paper-scale paraphrases get at least 1,024), which also lets a
#: one-line solution (a Countdown expression) be explained step by step; 4,096 is the longest
#: generation of the authors' scripts (eval_countdown.py). Powers of two keep the number of
#: generation calls (one per distinct budget) at most three per attempt. The CPU default gives an
#: integer (128) instead.
AUTO_FACTOR = 2
AUTO_MIN_TOKENS = 1024
AUTO_MAX_TOKENS = 4096


def paraphrase_seed(seed: int, problem_id: str, attempt: int) -> int:
    """The sampling seed of one paraphrase attempt: depends on the problem, not its position."""
    return derive_seed(seed, problem_id, "paraphrase", attempt)


def paraphrase_messages(task: Task, problem: Problem) -> Messages:
    """The prompt asking a model to rewrite the human solution of ``problem``."""
    return [{
        "role": "user",
        "content": (
            f"Problem:\n{problem['question']}\n\n"
            f"Correct solution:\n{task.human_completion(problem)}\n\n"
            "Rewrite this solution in your own words, step by step, as you would explain it. "
            f"Keep exactly the same final answer. {task.instruction}"
        ).strip(),
    }]


def paraphrase_prompt(task: Task, problem: Problem, prompt_format: str = "chat", tokenizer=None) -> Prompt:
    """The paraphrase request: :func:`paraphrase_messages` in ``chat``; in ``plain`` (a base
    student) the same request as plain text in the authors' layout, ending where the rewrite
    starts, after the tokenizer's BOS (:func:`~cotshape.tasks.base.special_prefix`)."""
    if check_prompt_format(prompt_format) == "chat":
        return paraphrase_messages(task, problem)
    return (
        f"{special_prefix(tokenizer)}Rewrite the correct solution below in your own words, step by step, as you "
        f"would explain it. Keep exactly the same final answer. {task.instruction}\n\n"
        f"Problem:\n{problem['question']}\n\nCorrect solution:\n{task.human_completion(problem)}\n\n"
        "Rewritten solution:"
    )


def paraphrase_budget(n_solution_tokens: int) -> int:
    """The ``auto`` token budget of a paraphrase of a human solution of ``n_solution_tokens``
    tokens (see :data:`AUTO_FACTOR`)."""
    want = max(AUTO_MIN_TOKENS, AUTO_FACTOR * int(n_solution_tokens))
    budget = AUTO_MIN_TOKENS
    while budget < want:
        budget *= 2
    return min(AUTO_MAX_TOKENS, budget)


def paraphrase_set(
    task: Task,
    problems: list[Problem],
    generate: GenerateFn,
    retries: int = 1,
    on_failure: str = "keep_original",
    seed: int = 0,
    prompt_format: str = "chat",
    tokenizer=None,
    max_new_tokens: int | str | None = None,
    allow_truncated: bool = False,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Paraphrase every problem's H; returns (P records, metrics).

    ``generate(prompts, seeds)`` returns one completion per prompt (the pipeline passes the
    generation backend; tests pass literal functions). ``prompt_format`` is the paraphraser's
    (:func:`paraphrase_prompt`). ``max_new_tokens="auto"``: each problem's budget is
    :func:`paraphrase_budget` of its human solution's tokens (``tokenizer``), and ``generate``
    is called once per distinct budget as ``generate(prompts, seeds, budget)``; an integer or
    None leaves the length to ``generate``. ``allow_truncated=False``: a completion whose
    ``finish_reason`` is ``length`` fails (counted in ``truncated``).
    """
    if on_failure not in ("keep_original", "drop"):
        raise InputError(f"paraphrase.on_failure must be keep_original or drop, got {on_failure!r}")
    budgets: dict[str, int] = {}
    if max_new_tokens == "auto":
        if tokenizer is None:
            raise InputError("paraphrase.max_new_tokens: auto needs the paraphraser's tokenizer")
        for prob in problems:
            n = len(tokenizer(task.human_completion(prob), add_special_tokens=False)["input_ids"])
            budgets[prob["id"]] = paraphrase_budget(n)
    done: dict[str, tuple[str, int]] = {}
    pending = list(problems)
    attempts = truncated = 0
    for attempt in range(retries + 1):
        if not pending:
            break
        attempts += len(pending)
        groups = [(None, pending)] if not budgets else [
            (b, [p for p in pending if budgets[p["id"]] == b]) for b in sorted({budgets[p["id"]] for p in pending})]
        outs_by_id: dict[str, str] = {}
        for budget, group in groups:
            args: list[Any] = [[paraphrase_prompt(task, p, prompt_format, tokenizer) for p in group],
                               [paraphrase_seed(seed, p["id"], attempt) for p in group]]
            texts = generate(*args) if budget is None else generate(*args, budget)
            outs_by_id.update({p["id"]: t for p, t in zip(group, texts, strict=True)})
        outs = [outs_by_id[p["id"]] for p in pending]
        still = []
        for prob, out in zip(pending, outs, strict=True):
            text = getattr(out, "text", out)
            if not allow_truncated and getattr(out, "finish_reason", None) == "length":
                truncated += 1
                still.append(prob)
            elif text.strip() and task.verify(prob, text).correct:
                done[prob["id"]] = (text, attempt)
            else:
                still.append(prob)
        pending = still

    records = []
    for prob in problems:
        prompt = task.chat_messages(prob)
        if prob["id"] in done:
            text, attempt = done[prob["id"]]
            records.append(training_record(task.name, "P", prob["id"], prompt, text, paraphrased=True, attempt=attempt))
        elif on_failure == "keep_original":
            records.append(training_record(task.name, "P", prob["id"], prompt, task.human_completion(prob), paraphrased=False))
    n = len(problems)
    metrics = {
        "problems": n,
        "paraphrased": len(done),
        "success_rate": len(done) / n if n else 0.0,
        "kept_original": sum(1 for r in records if not r["paraphrased"]),
        "dropped": n - len(records),
        "generations": attempts,
        "truncated": truncated,
        "size": len(records),
        # the share of P that is H (every attempt failed, on_failure: keep_original)
        "fallback_share": sum(1 for r in records if not r["paraphrased"]) / len(records) if records else 0.0,
        "prompt_format": prompt_format,
        "max_new_tokens": max_new_tokens,
    }
    if budgets:
        metrics["budget_min"], metrics["budget_max"] = min(budgets.values()), max(budgets.values())
    return records, metrics
