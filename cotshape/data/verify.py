"""Batch verification: grade many completions fast, for the verify stage and ``cotshape verify``.

:func:`verify_records` adds ``correct``, ``parsed``, ``extracted`` and ``reason`` to each record
(``{"problem_id", "completion", ...}``), keeping the order. It is fast because

* answers are extracted once per record (cheap regexes, in this process);
* identical ``(problem, extracted answer)`` pairs are graded once (a weak model repeats itself);
* the task's :meth:`~cotshape.tasks.base.Task.check_many` grades the unique pairs in bulk: math
  compares plain numbers exactly in this process and sends the rest to math-verify in a
  :class:`~cotshape.execution.pool.GuardedPool` of worker processes (gold parsed once per problem in each worker),
  code goes through the sandbox pool.

:class:`~cotshape.execution.pool.GuardedPool` is also what makes math grading unable to hang: a worker that gives no
answer within ``item_timeout_s`` (sympy stuck in C code, where no alarm reaches it) or dies is
killed and replaced, that item is graded wrong with the reason, and the rest of its chunk is
retried.
"""

from __future__ import annotations

from typing import Any

from cotshape.core.errors import CotshapeError
from cotshape.core.records import RecordError, read_jsonl, read_problems, write_jsonl
from cotshape.tasks import get_task
from cotshape.tasks.base import VERIFIER_ERROR, Problem, Task, Verdict

VERDICT_FIELDS = ("correct", "parsed", "extracted", "reason")


def _validate_records(records: list[dict], problems: dict[str, Problem]) -> None:
    for i, rec in enumerate(records, 1):
        if not isinstance(rec, dict):
            raise RecordError(f"record {i}: expected an object, got {type(rec).__name__}")
        for key in ("problem_id", "completion"):
            if key not in rec:
                raise RecordError(f"record {i}: missing field {key!r}")
        if not isinstance(rec["problem_id"], str):
            raise RecordError(f"record {i}: field 'problem_id' must be a string, got {rec['problem_id']!r:.80}")
        if rec["problem_id"] not in problems:
            raise RecordError(f"record {i}: unknown problem_id {rec['problem_id']!r} (not in the problem set)")


def verify_records(
    task: Task,
    problems: dict[str, Problem],
    records: list[dict],
    workers: int | None = None,
    progress: bool = True,
) -> list[dict]:
    """Grade each record's ``completion`` against ``problems[record["problem_id"]]``.

    Returns new records (order kept) with ``correct``, ``parsed``, ``extracted`` and
    ``reason`` added. Model output never makes this raise; a record without ``problem_id`` /
    ``completion``, or with an unknown ``problem_id``, is a :class:`RecordError`.
    """
    from tqdm import tqdm

    _validate_records(records, problems)
    verdicts: list[Verdict | None] = [None] * len(records)
    unique: dict[tuple[str, str], int] = {}
    pairs: list[tuple[Problem, str]] = []
    slot_of: list[int] = [-1] * len(records)
    for i, rec in enumerate(tqdm(records, desc=f"extract {task.name}", unit="rec", disable=not progress)):
        completion = rec["completion"]
        if not isinstance(completion, str):
            verdicts[i] = Verdict(False, False, None, f"completion is {type(completion).__name__}, not str")
            continue
        try:
            extracted = task.extract_answer(completion)
        except Exception as e:  # noqa: BLE001
            verdicts[i] = Verdict(False, False, None, f"extractor error: {type(e).__name__}: {e}")
            continue
        if extracted is None:
            verdicts[i] = Verdict(False, False, None, "no final answer found")
            continue
        key = (rec["problem_id"], extracted)
        if key not in unique:
            unique[key] = len(pairs)
            pairs.append((problems[rec["problem_id"]], extracted))
        slot_of[i] = unique[key]
    try:
        graded = task.check_many(pairs, workers=workers, progress=progress)
    except CotshapeError:
        raise  # the verifier cannot run at all (e.g. a misconfigured sandbox): stop, do not grade wrong
    except Exception as e:  # noqa: BLE001 - an unexpected grader failure: grade wrong, say why
        graded = [Verdict(False, True, ex, f"{VERIFIER_ERROR}: {type(e).__name__}: {e}") for _, ex in pairs]
    out = []
    for i, rec in enumerate(records):
        v = verdicts[i] if slot_of[i] < 0 else graded[slot_of[i]]
        out.append({**rec, **v.to_dict()})
    return out


def count_verifier_errors(records: list[dict]) -> int:
    """Records whose grading failed (reason starting with ``verifier error``), not graded wrong
    on their merits; select refuses to run when there are too many."""
    return sum(str(r.get("reason") or "").startswith(VERIFIER_ERROR) for r in records)


def summarize(records: list[dict]) -> dict[str, Any]:
    """Counts and both accuracy definitions (correct/total and correct/parsed), and the number
    of verifier errors."""
    n = len(records)
    correct = sum(bool(r.get("correct")) for r in records)
    parsed = sum(bool(r.get("parsed")) for r in records)
    return {
        "n": n,
        "correct": correct,
        "parsed": parsed,
        "accuracy": correct / n if n else 0.0,
        "accuracy_parsed": correct / parsed if parsed else 0.0,
        "verifier_errors": count_verifier_errors(records),
    }


def verify_file(
    task_name: str,
    problems_path: str | os.PathLike,
    in_path: str | os.PathLike,
    out_path: str | os.PathLike,
    workers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Verify a JSONL of ``{"problem_id", "completion", ...}`` records against a problem file
    and write them, with the verdict fields, atomically to ``out_path``. Returns
    :func:`summarize` of the result. Errors name the file and line."""
    task = get_task(task_name)
    problems = {p["id"]: p for p in read_problems(problems_path)}
    records = read_jsonl(in_path, required=("problem_id", "completion"))
    for lineno, rec in enumerate(records, 1):
        if not isinstance(rec["problem_id"], str):
            raise RecordError(f"{in_path}: record {lineno}: field 'problem_id' must be a string, "
                              f"got {rec['problem_id']!r:.80}")
        if rec["problem_id"] not in problems:
            # read_jsonl skips blank lines, so report the record number and the id
            raise RecordError(
                f"{in_path}: record {lineno}: problem_id {rec['problem_id']!r} is not in {problems_path}"
            )
        if problems[rec["problem_id"]]["task"] != task.name:
            raise RecordError(
                f"{problems_path}: problem {rec['problem_id']!r} is a {problems[rec['problem_id']]['task']!r} "
                f"problem, not {task.name!r}"
            )
    out = verify_records(task, problems, records, workers=workers, progress=progress)
    write_jsonl(out_path, out)
    return summarize(out)
