"""Greedy evaluation of a student on a task's test problems, and the accuracy metrics.

:func:`evaluate` decodes every test problem greedily through a generation backend (the same
interface the sampler uses, so the transformers and vLLM backends both work), grades the
completions with the task's verifier and returns one output record per problem plus the
metrics of :func:`score`.

Two accuracy definitions are reported side by side, because users compare with both:

* ``accuracy`` = correct / all problems (an answer that could not be parsed counts as wrong);
* ``accuracy_parsed`` = correct / answers that parsed. This is the definition the paper's
  released evaluation scripts use: they drop unparsed answers from the denominator. When no
  answer parsed at all it is 0.0 and ``no_parsed_answers`` is true, so a reader can tell
  "0 of 0" from "0 of 24".

The stage entry point (stages/evaluate.py) loads the model, calls :func:`evaluate` and writes
the records and metrics; nothing here knows about DVC paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cotshape.generation.base import Backend, SamplingParams
from cotshape.stats import wilson_interval
from cotshape.tasks.base import Problem, Task, Verdict

#: tasks whose answers are programs graded by running tests; they also report pass@1
CODE_TASKS = frozenset({"mbpp"})

#: the keys of one per-problem output record, in the order they are written
OUTPUT_FIELDS = (
    "problem_id",
    "prompt",
    "completion",
    "num_tokens",
    "finish_reason",
    "correct",
    "parsed",
    "extracted",
    "reason",
    "gold",
)


def is_code_task(task: Task) -> bool:
    """True for tasks graded by running code (pass@1 is reported for them)."""
    return bool(getattr(task, "is_code", False)) or task.name in CODE_TASKS


def _verdict_flags(i: int, v: Verdict | dict[str, Any]) -> tuple[bool, bool]:
    if isinstance(v, Verdict):
        correct, parsed = v.correct, v.parsed
    elif isinstance(v, dict):
        missing = [k for k in ("correct", "parsed") if k not in v]
        if missing:
            raise ValueError(f"verdict {i}: missing field(s) {', '.join(missing)}")
        correct, parsed = v["correct"], v["parsed"]
    else:
        raise TypeError(f"verdict {i}: expected a Verdict or a dict, got {type(v).__name__}")
    if not isinstance(correct, bool) or not isinstance(parsed, bool):
        raise ValueError(
            f"verdict {i}: 'correct' and 'parsed' must be booleans, got "
            f"{type(correct).__name__} and {type(parsed).__name__}"
        )
    if correct and not parsed:
        # a verifier bug, not model output: counting it would make accuracy_parsed exceed 1
        raise ValueError(f"verdict {i}: correct=True but parsed=False (a correct answer must have parsed)")
    return correct, parsed


def score(verdicts: Sequence[Verdict | dict[str, Any]], code: bool = False) -> dict[str, Any]:
    """Accuracy metrics of a list of verdicts (:class:`Verdict` objects or dicts holding at
    least ``correct`` and ``parsed``, e.g. evaluation output records).

    Returns ``{"n", "n_correct", "n_parsed", "accuracy", "accuracy_parsed", "parse_rate",
    "no_parsed_answers", "ci95"}`` (``ci95``: the Wilson 95 % interval of ``accuracy``) and,
    when ``code`` is true, ``"pass@1"`` (with one greedy sample per
    problem it equals ``accuracy``). An empty list is an error: an evaluation of nothing is a
    misconfiguration, not an accuracy of zero.
    """
    if len(verdicts) == 0:
        raise ValueError("no verdicts to score (the test set is empty)")
    n_correct = n_parsed = 0
    for i, v in enumerate(verdicts):
        correct, parsed = _verdict_flags(i, v)
        n_correct += correct
        n_parsed += parsed
    n = len(verdicts)
    metrics: dict[str, Any] = {
        "n": n,
        "n_correct": n_correct,
        "n_parsed": n_parsed,
        "accuracy": n_correct / n,
        "accuracy_parsed": n_correct / n_parsed if n_parsed else 0.0,
        "parse_rate": n_parsed / n,
        "no_parsed_answers": n_parsed == 0,
        # Wilson 95 % interval of the accuracy: the binomial uncertainty of n test problems
        "ci95": list(wilson_interval(n_correct, n)),
    }
    if code:
        metrics["pass@1"] = metrics["accuracy"]
    return metrics


def evaluate(
    task: Task,
    problems: Sequence[Problem],
    backend: Backend,
    max_new_tokens: int,
    batch_size: int | None = None,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Greedy-decode ``task.chat_messages(p)`` for every problem, grade, and score.

    ``batch_size`` is the number of prompts per ``backend.generate`` call; None (the default)
    hands every prompt over at once, which is fastest with a continuous-batching backend (the
    transformers backend refills its batch as rows finish; a call that ends drains it). The
    progress bar counts generated tokens against the upper bound ``len(problems) *
    max_new_tokens``, so its ETA is pessimistic when completions stop early.

    Returns ``(records, metrics)``: one record per problem, in input order, with the fields of
    :data:`OUTPUT_FIELDS`, and the metrics of :func:`score`.
    """
    from tqdm.auto import tqdm

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if not problems:
        raise ValueError(f"no test problems to evaluate for task {task.name!r}")
    problems_by_id: dict[str, Problem] = {}
    for p in problems:
        if p["id"] in problems_by_id:
            raise ValueError(f"duplicate problem id {p['id']!r} in the test problems of {task.name!r}")
        problems_by_id[p["id"]] = p

    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens)
    prompts = [task.chat_messages(p) for p in problems]
    chunk_size = batch_size or len(prompts)
    records: list[dict[str, Any]] = []
    bar = tqdm(
        total=len(problems) * max_new_tokens,
        desc=f"evaluate {task.name} (tokens, at most)",
        unit="tok",
        disable=not progress,
    )
    try:
        for start in range(0, len(problems), chunk_size):
            chunk = prompts[start : start + chunk_size]
            outs = backend.generate(chunk, params, progress=bar.update)
            if len(outs) != len(chunk) or any(len(o) != 1 for o in outs):
                raise RuntimeError(
                    f"backend {backend.name!r} returned {[len(o) for o in outs]} completions "
                    f"for {len(chunk)} prompts (expected one each)"
                )
            for problem, prompt, (c,) in zip(problems[start : start + chunk_size], chunk, outs, strict=True):
                records.append(
                    {
                        "problem_id": problem["id"],
                        "prompt": prompt,
                        "completion": c.text,
                        "num_tokens": c.num_tokens,
                        "finish_reason": c.finish_reason,
                    }
                )
            bar.set_postfix_str(f"{len(records)}/{len(problems)} problems")
        bar.total = bar.n  # completions that stopped early: close the bar at 100 %
    finally:
        bar.close()

    from cotshape.verify import verify_records

    graded = verify_records(task, problems_by_id, records, progress=progress)
    out = []
    for rec in graded:
        rec = dict(rec)
        rec["gold"] = problems_by_id[rec["problem_id"]]["answer"]
        out.append({k: rec[k] for k in OUTPUT_FIELDS})
    return out, score(out, code=is_code_task(task))
