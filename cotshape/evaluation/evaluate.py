"""Greedy evaluation of a student on a task's test problems, and the accuracy metrics.

:func:`evaluate` decodes every test problem greedily through a generation backend (the same
interface the sampler uses, so the transformers and vLLM backends both work), grades the
completions with the task's verifier and returns one output record per problem plus the
metrics of :func:`score`.

Two accuracy definitions are reported side by side, because users compare with both:

* ``accuracy`` = correct / all problems (an answer that could not be parsed counts as wrong);
* ``accuracy_parsed`` = correct / answers that parsed: what the authors' released scripts
  compute for MATH, GSM8K (eval_math_gsm8k.py drops unparsed answers from the denominator) and
  Countdown (eval_countdown.py leaves out answers with no equation); their MBPP pass@1 divides
  by all problems, i.e. ``accuracy`` (README, "Accuracy, two ways"). When no
  answer parsed at all it is 0.0 and ``no_parsed_answers`` is true, so a reader can tell
  "0 of 0" from "0 of 24".

The prompt is :func:`cotshape.tasks.base.student_prompt` in ``base.prompt_format`` (the text SFT
trained on); with ``evaluate.scoring: paper`` the answers are graded by the authors' scorers
(:meth:`~cotshape.tasks.base.Task.paper_verify`) instead of ours, and the metrics say which
(``scoring``, ``prompt_format``, ``max_new_tokens``).

The stage entry point (stages/evaluate.py) loads the model, calls :func:`evaluate` and writes
the records and metrics; nothing here knows about DVC paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cotshape.core.stats import wilson_interval
from cotshape.generation.base import Backend, Prompt, SamplingParams
from cotshape.tasks.base import Problem, Task, Verdict, check_prompt_format, student_prompt

#: ``evaluate.scoring``: strict (the project's verifiers) or paper (the authors' released scorers)
SCORINGS = ("strict", "paper")

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


def resolve_max_new_tokens(task: Task, max_new_tokens: int | str) -> int:
    """``evaluate.max_new_tokens``: an integer as is, ``auto`` the task's paper value
    (:attr:`Task.eval_max_new_tokens`: 2,048 MATH/GSM8K, 4,096 Countdown, 1,024 MBPP)."""
    if max_new_tokens == "auto":
        return int(task.eval_max_new_tokens)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"evaluate.max_new_tokens: must be an integer >= 1 or auto, got {max_new_tokens!r}")
    return max_new_tokens


def student_inputs(task: Task, problems: Sequence[Problem], prompt_format: str, tokenizer) -> list[Prompt]:
    """What evaluation hands the backend per problem: :func:`~cotshape.tasks.base.student_prompt`
    text. With ``chat`` and a backend without a tokenizer (a test double) the chat messages,
    which the backends render to that same text."""
    if prompt_format == "chat" and tokenizer is None:
        return [task.chat_messages(p) for p in problems]
    return [student_prompt(task, p, prompt_format, tokenizer) for p in problems]


def evaluate(
    task: Task,
    problems: Sequence[Problem],
    backend: Backend,
    max_new_tokens: int | str,
    batch_size: int | None = None,
    progress: bool = True,
    prompt_format: str = "chat",
    scoring: str = "strict",
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Greedy-decode the student prompt of every problem, grade, and score.

    ``prompt_format`` (``base.prompt_format``): ``chat`` or ``plain`` (the authors' plain-text
    template, stopped at the task's :attr:`~cotshape.tasks.base.Task.plain_stop` strings).
    ``max_new_tokens``: an integer or ``auto`` (:func:`resolve_max_new_tokens`). ``scoring``:
    ``strict`` grades with the task's verifier (:mod:`cotshape.data.verify`), ``paper`` with the
    authors' scorer (:meth:`~cotshape.tasks.base.Task.paper_verify`). The metrics record
    ``prompt_format``, ``scoring`` and the resolved ``max_new_tokens``.

    ``batch_size`` is the number of prompts per ``backend.generate`` call; None (the default)
    hands every prompt over at once, which is fastest with a continuous-batching backend (the
    transformers backend refills its batch as rows finish; a call that ends drains it). The
    progress bar counts generated tokens against the upper bound ``len(problems) *
    max_new_tokens``, so its ETA is pessimistic when completions stop early.

    Returns ``(records, metrics)``: one record per problem, in input order, with the fields of
    :data:`OUTPUT_FIELDS`, and the metrics of :func:`score`.
    """
    from tqdm.auto import tqdm

    max_new_tokens = resolve_max_new_tokens(task, max_new_tokens)
    check_prompt_format(prompt_format)
    if scoring not in SCORINGS:
        raise ValueError(f"evaluate.scoring: must be one of {', '.join(SCORINGS)}, got {scoring!r}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 or None, got {batch_size}")
    if not problems:
        raise ValueError(f"no test problems to evaluate for task {task.name!r}")
    problems_by_id: dict[str, Problem] = {}
    for p in problems:
        if p["id"] in problems_by_id:
            raise ValueError(f"duplicate problem id {p['id']!r} in the test problems of {task.name!r}")
        problems_by_id[p["id"]] = p

    params = SamplingParams(n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                            stop=task.stop_strings(prompt_format))
    prompts = student_inputs(task, problems, prompt_format, getattr(backend, "tokenizer", None))
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

    if scoring == "paper":
        graded = [{**rec, **task.paper_verify(problems_by_id[rec["problem_id"]], rec["completion"]).to_dict()}
                  for rec in records]
    else:
        from cotshape.data.verify import verify_records

        graded = verify_records(task, problems_by_id, records, progress=progress)
    out = []
    for rec in graded:
        rec = dict(rec)
        rec["gold"] = problems_by_id[rec["problem_id"]]["answer"]
        out.append({k: rec[k] for k in OUTPUT_FIELDS})
    metrics = score(out, code=is_code_task(task))
    metrics.update(scoring=scoring, prompt_format=prompt_format, max_new_tokens=max_new_tokens)
    return out, metrics


def summarize_runs(per_run: Sequence[dict[str, Any]],
                   correct: Sequence[Sequence[bool]] | None = None) -> dict[str, Any]:
    """The metrics of a set evaluated once per training run (``per_run``: :func:`score` of each;
    ``correct[r][i]``: run r right on test problem i, the same problems in the same order for
    every run; needed with more than one run).

    ``accuracy``, ``accuracy_parsed``, ``parse_rate`` (and ``pass@1``) are means over the runs;
    ``ci95`` is the interval of the set's accuracy with the training runs and the test problems
    both random draws (:func:`cotshape.core.random_effects.runs_by_problems_interval`: never narrower than
    the t-interval over the runs), ``ci95_is`` says so; with one run it is that run's Wilson
    interval, and ``ci95_is`` says it covers the test problems only. ``runs`` is the number of
    runs, ``per_run`` their metrics."""
    from cotshape.core.random_effects import runs_by_problems_interval

    if not per_run:
        raise ValueError("summarize_runs: no runs")
    runs = len(per_run)
    out: dict[str, Any] = {"runs": runs, "n": per_run[0]["n"]}
    for key in ("accuracy", "accuracy_parsed", "parse_rate", "pass@1"):
        if all(key in m for m in per_run):
            out[key] = sum(m[key] for m in per_run) / runs
    for key in ("scoring", "prompt_format", "max_new_tokens", "backend"):
        if key in per_run[0]:
            out[key] = per_run[0][key]
    out["no_parsed_answers"] = all(m.get("no_parsed_answers") for m in per_run)
    if runs == 1:
        out["ci95"], out["ci95_is"] = per_run[0]["ci95"], "test problems (one training run)"
    else:
        if correct is None or len(correct) != runs:
            raise ValueError(f"summarize_runs: {runs} runs need their correctness per problem (correct)")
        iv = runs_by_problems_interval([[float(c) for c in row] for row in correct])
        out["ci95"] = [max(0.0, iv["ci95"][0]), min(1.0, iv["ci95"][1])]
        out["ci95_is"] = f"training runs ({runs}) and test problems (two-way random effects)"
        out["run_sd"], out["se_test"], out["se_runs"] = iv["sd"], iv["se_test"], iv["se_runs"]
    out["per_run"] = [dict(m) for m in per_run]
    return out
