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

The success rate (problems whose paraphrase verified) goes to ``metrics/paraphrase/TASK.json``.

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

from cotshape.errors import InputError
from cotshape.generation.base import derive_seed
from cotshape.records import training_record
from cotshape.tasks.base import Messages, Problem, Task

#: ``generate(prompts, seeds)``: one completion per prompt, prompt ``i`` sampled with ``seeds[i]``
GenerateFn = Callable[[list[Messages], list[int]], list[str]]


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


def paraphrase_set(
    task: Task,
    problems: list[Problem],
    generate: GenerateFn,
    retries: int = 1,
    on_failure: str = "keep_original",
    seed: int = 0,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Paraphrase every problem's H; returns (P records, metrics).

    ``generate(prompts, seeds)`` returns one completion per prompt (the pipeline passes the
    generation backend; tests pass literal functions).
    """
    if on_failure not in ("keep_original", "drop"):
        raise InputError(f"paraphrase.on_failure must be keep_original or drop, got {on_failure!r}")
    done: dict[str, tuple[str, int]] = {}
    pending = list(problems)
    attempts = 0
    for attempt in range(retries + 1):
        if not pending:
            break
        attempts += len(pending)
        outs = generate([paraphrase_messages(task, p) for p in pending],
                        [paraphrase_seed(seed, p["id"], attempt) for p in pending])
        still = []
        for prob, text in zip(pending, outs, strict=True):
            if text.strip() and task.verify(prob, text).correct:
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
        "size": len(records),
    }
    return records, metrics
