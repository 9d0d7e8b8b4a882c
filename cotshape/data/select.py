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
* Truncated CoTs (``finish_reason: length``, cut at ``max_new_tokens``) are used for neither
  set unless ``allow_truncated=True`` (``select.allow_truncated``): a cut CoT's "answer" is
  often only the last number of the cut text. The counts report how many samples were excluded
  as truncated (``excluded_truncated``). With ``allow_truncated=True``, W candidates that ended
  on their own are still preferred to truncated ones.
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

import os
import random
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from cotshape.core.errors import RecordError, StageError
from cotshape.core.records import iter_jsonl
from cotshape.core.records import training_record as training_record  # re-exported: moved to records
from cotshape.tasks.base import VERIFIER_ERROR

#: default share of samples whose grading failed above which selection refuses to run: a
#: broken verifier (sandbox down) would otherwise look like a teacher that is always wrong
MAX_VERIFIER_ERRORS = 0.05


def _type_problem(rec: Any) -> str | None:
    """What is wrong with the types of a verified record, or None."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    missing = [k for k in ("problem_id", "sample_index", "completion", "correct", "parsed") if k not in rec]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    pid, idx = rec["problem_id"], rec["sample_index"]
    if not isinstance(pid, str) or not pid:
        return f"field 'problem_id' must be a non-empty string, got {pid!r}"
    if isinstance(idx, bool) or not isinstance(idx, int) or idx < 0:
        return f"field 'sample_index' must be an integer >= 0, got {idx!r}"
    if not isinstance(rec["completion"], str):
        return f"field 'completion' must be a string, got {rec['completion']!r:.80}"
    for key in ("correct", "parsed"):
        if not isinstance(rec[key], bool):  # "no" is truthy: never trust truthiness here
            return f"field {key!r} must be true or false, got {rec[key]!r:.80}"
    if rec["correct"] and not rec["parsed"]:
        return "correct is true but parsed is false (a correct answer must have parsed)"
    if rec.get("finish_reason") not in ("stop", "length", None):
        return f"field 'finish_reason' must be stop or length, got {rec['finish_reason']!r:.80}"
    if not isinstance(rec.get("reason", ""), (str, type(None))):
        return f"field 'reason' must be a string, got {rec['reason']!r:.80}"
    return None


def check_verified(rows: Iterable[tuple[int, dict[str, Any]]], problem_ids: Iterable[str],
                   source: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Check ``(line number, record)`` pairs of verified samples: field types, known problem
    ids, no sample twice. Errors are :class:`RecordError` starting with ``source:line`` (with
    ``record N`` when there is no source file)."""
    known = set(problem_ids)
    seen: dict[tuple[str, int], int] = {}
    out = []
    for lineno, rec in rows:
        where = f"{source}:{lineno}" if source is not None else f"record {lineno}"
        err = _type_problem(rec)
        if err:
            raise RecordError(f"{where}: {err}")
        if rec["problem_id"] not in known:
            raise RecordError(f"{where}: problem_id {rec['problem_id']!r} is not a training problem")
        key = (rec["problem_id"], rec["sample_index"])
        if key in seen:
            first = f"line {seen[key]}" if source is not None else f"record {seen[key]}"
            raise RecordError(f"{where}: duplicate sample {key[0]}#{key[1]} (first on {first})")
        seen[key] = lineno
        out.append(rec)
    return out


def read_verified(path: str | os.PathLike, problem_ids: Iterable[str]) -> list[dict[str, Any]]:
    """Read the verify stage's output and check it (see :func:`check_verified`); errors name the
    file and line."""
    return check_verified(iter_jsonl(path), problem_ids, source=path)


def problem_rng(seed: int, problem_id: str, salt: str = "") -> random.Random:
    """A generator that depends only on (seed, problem id, salt): stable under reordering."""
    return random.Random(f"{seed}\x00{problem_id}\x00{salt}")


def select_gw(
    verified: list[dict[str, Any]],
    problem_ids: list[str],
    seed: int = 0,
    balance: bool = False,
    max_verifier_errors: float | None = None,
    allow_truncated: bool = False,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, int]]:
    """Pick one G and one W sample per problem.

    ``verified`` records carry ``problem_id``, ``sample_index``, ``completion``, ``correct`` and
    ``parsed``; ``problem_ids`` fixes the output order (the training split's order). Returns
    ``({"G": [...], "W": [...]}, counts)`` where each chosen record is the verified sample record
    unchanged, and counts are the numbers written to ``metrics/select/TASK.json``.

    Records are checked (:func:`check_verified`: types, known problems, no duplicates). With
    ``max_verifier_errors`` set, more than that share of samples whose grading failed (reason
    starting with ``verifier error``) is a :class:`StageError`.
    """
    check_verified(enumerate(verified, 1), problem_ids)
    n_errors = sum(str(r.get("reason") or "").startswith(VERIFIER_ERROR) for r in verified)
    if max_verifier_errors is not None and verified and n_errors / len(verified) > max_verifier_errors:
        first = next(r["reason"] for r in verified if str(r.get("reason") or "").startswith(VERIFIER_ERROR))
        raise StageError(
            f"{n_errors} of {len(verified)} samples ({n_errors / len(verified):.0%}) could not be graded "
            f"(first: {first!r:.200}); more than select.max_verifier_errors ({max_verifier_errors:.0%}): "
            "fix the verifier (e.g. the sandbox) and rerun verify"
        )
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in verified:
        by_problem[rec["problem_id"]].append(rec)

    out: dict[str, list[dict[str, Any]]] = {"G": [], "W": []}
    counts = {"problems": len(problem_ids), "samples": len(verified), "with_correct": 0,
              "with_wrong": 0, "with_both": 0, "with_unparsed_only": 0,
              "truncated": sum(r.get("finish_reason") == "length" for r in verified), "excluded_truncated": 0}
    for pid in problem_ids:
        samples = sorted(by_problem.get(pid, []), key=lambda r: r["sample_index"])
        if not allow_truncated:
            counts["excluded_truncated"] += sum(r.get("finish_reason") == "length" for r in samples)
            samples = [r for r in samples if r.get("finish_reason") != "length"]
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
    counts["verifier_errors"] = n_errors
    return out, counts
