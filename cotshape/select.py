"""Select the G and W training sets from verified teacher samples.

For every training problem, one **G** CoT (final answer correct) and one **W** CoT (final answer
wrong) are drawn from its teacher samples with a seeded generator keyed by the problem id, so
the draw for one problem never depends on which other problems are in the file.

Policy (documented in the README too):

* **G** candidates are samples the verifier graded ``correct``.
* **W** candidates are samples with a *parsed, wrong* final answer. Samples where no final answer
  could be found (``parsed=False``, typically cut at ``max_new_tokens``) are not "wrong answers"
  and are used for neither set; nor are samples whose grading failed (reason starting with
  ``verifier error``: the verifier raised, the gold answer was unusable, the sandbox was down).
  Among W candidates, CoTs that ended on their own are preferred to ones cut at
  ``max_new_tokens`` (whose answer was only found by a fallback such as the last number).
* A problem with no G candidate is absent from G; with no W candidate, absent from W.
* ``balance=True`` keeps only problems that have both, so G and W cover exactly the same
  problems and have the same size.

Example::

    >>> samples = [
    ...     {"problem_id": "p1", "sample_index": 0, "completion": "... The answer is 4.", "correct": True, "parsed": True},
    ...     {"problem_id": "p1", "sample_index": 1, "completion": "... The answer is 5.", "correct": False, "parsed": True},
    ...     {"problem_id": "p2", "sample_index": 0, "completion": "... The answer is 9.", "correct": False, "parsed": True},
    ... ]
    >>> sets, counts = select_gw(samples, ["p1", "p2"], seed=0)
    >>> [r["problem_id"] for r in sets["G"]], [r["problem_id"] for r in sets["W"]]
    (['p1'], ['p1', 'p2'])
    >>> counts["with_both"]
    1
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from cotshape.tasks.base import VERIFIER_ERROR


def problem_rng(seed: int, problem_id: str, salt: str = "") -> random.Random:
    """A generator that depends only on (seed, problem id, salt): stable under reordering."""
    return random.Random(f"{seed}\x00{problem_id}\x00{salt}")


def select_gw(
    verified: list[dict[str, Any]],
    problem_ids: list[str],
    seed: int = 0,
    balance: bool = False,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Pick one G and one W sample per problem.

    ``verified`` records carry ``problem_id``, ``sample_index``, ``completion``, ``correct`` and
    ``parsed``; ``problem_ids`` fixes the output order (the training split's order). Returns
    ``({"G": [...], "W": [...]}, counts)`` where each chosen record is the verified sample record
    unchanged, and counts are the numbers written to ``metrics/select/TASK.json``.
    """
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    known = set(problem_ids)
    for rec in verified:
        if rec["problem_id"] not in known:
            raise ValueError(f"sample {rec.get('id', rec['problem_id'])!r} refers to unknown problem {rec['problem_id']!r}")
        by_problem[rec["problem_id"]].append(rec)

    out: dict[str, list[dict[str, Any]]] = {"G": [], "W": []}
    counts = {"problems": len(problem_ids), "samples": len(verified), "with_correct": 0,
              "with_wrong": 0, "with_both": 0, "with_unparsed_only": 0}
    for pid in problem_ids:
        samples = sorted(by_problem.get(pid, []), key=lambda r: r["sample_index"])
        good = [r for r in samples if r["correct"]]
        bad = [r for r in samples if not r["correct"] and r["parsed"]
               and not str(r.get("reason", "")).startswith(VERIFIER_ERROR)]
        # a CoT that ended on its own is a genuine wrong answer; one cut at max_new_tokens only
        # "parsed" through the last-number fallback, so it is used only when nothing else is there
        finished = [r for r in bad if r.get("finish_reason") != "length"]
        bad = finished or bad
        counts["with_correct"] += bool(good)
        counts["with_wrong"] += bool(bad)
        counts["with_both"] += bool(good and bad)
        counts["with_unparsed_only"] += bool(samples and not good and not bad)
        if balance and not (good and bad):
            continue
        # one generator per set, so the W pick never depends on the G candidates
        if good:
            out["G"].append(good[problem_rng(seed, pid, "G").randrange(len(good))])
        if bad:
            out["W"].append(bad[problem_rng(seed, pid, "W").randrange(len(bad))])
    counts["selected_G"] = len(out["G"])
    counts["selected_W"] = len(out["W"])
    return out, counts


def training_record(task_name: str, set_name: str, problem_id: str, prompt: list[dict[str, str]],
                    completion: str, **extra: Any) -> dict[str, Any]:
    """One record of a training set (the format SFT and closeness read)."""
    rec = {
        "id": f"{task_name}-{set_name}-{problem_id}",
        "problem_id": problem_id,
        "task": task_name,
        "set": set_name,
        "prompt": prompt,
        "completion": completion,
    }
    rec.update(extra)
    return rec
