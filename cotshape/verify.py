"""Batch verification: grade many completions fast, for the verify stage and ``cotshape verify``.

:func:`verify_records` adds ``correct``, ``parsed``, ``extracted`` and ``reason`` to each record
(``{"problem_id", "completion", ...}``), keeping the order. It is fast because

* answers are extracted once per record (cheap regexes, in this process);
* identical ``(problem, extracted answer)`` pairs are graded once (a weak model repeats itself);
* the task's :meth:`~cotshape.tasks.base.Task.check_many` grades the unique pairs in bulk: math
  compares plain numbers exactly in this process and sends the rest to math-verify in a
  :class:`GuardedPool` of worker processes (gold parsed once per problem in each worker),
  code goes through the sandbox pool.

:class:`GuardedPool` is also what makes math grading unable to hang: a worker that gives no
answer within ``item_timeout_s`` (sympy stuck in C code, where no alarm reaches it) or dies is
killed and replaced, that item is graded wrong with the reason, and the rest of its chunk is
retried.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any

from cotshape.errors import CotshapeError
from cotshape.records import RecordError, read_jsonl, read_problems, write_jsonl
from cotshape.tasks import get_task
from cotshape.tasks.base import VERIFIER_ERROR, Problem, Task, Verdict

VERDICT_FIELDS = ("correct", "parsed", "extracted", "reason")


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def _worker_main(fn: Callable[..., Any], conn: Any) -> None:
    while True:
        try:
            chunk = conn.recv()
        except EOFError:
            return
        if chunk is None:
            return
        for idx, args in chunk:
            try:
                result = ("ok", fn(*args))
            except Exception as e:  # noqa: BLE001 - report, keep serving
                result = ("error", f"{type(e).__name__}: {e}")
            conn.send((idx, result))


class GuardedPool:
    """Worker processes that run ``fn(*args)`` for many items, each under a hard deadline.

    ``map`` returns, per item, ``("ok", value)``, ``("error", message)`` when ``fn`` raised,
    or ``("timeout", message)`` when the worker was killed (no answer within
    ``item_timeout_s``, or it died). Results are streamed back one by one, so a slow item is
    noticed after ``item_timeout_s`` whatever the chunk size. Workers are forked where the
    platform allows (they inherit already-imported modules and start in milliseconds).
    """

    def __init__(self, fn: Callable[..., Any], workers: int | None = None, item_timeout_s: float = 20.0):
        self.fn = fn
        self.workers = max(1, workers or default_workers())
        self.item_timeout_s = item_timeout_s
        methods = mp.get_all_start_methods()
        self._ctx = mp.get_context("fork" if "fork" in methods else "spawn")

    def _start(self) -> tuple[Any, Any]:
        parent, child = self._ctx.Pipe()
        proc = self._ctx.Process(target=_worker_main, args=(self.fn, child), daemon=True)
        proc.start()
        child.close()
        return proc, parent

    @staticmethod
    def _stop(proc: Any, conn: Any, kill: bool) -> None:
        if kill:
            proc.kill()
        else:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                proc.kill()
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join()
        conn.close()

    def map(self, items: Sequence[tuple], chunk_size: int | None = None, progress: bool = False,
            desc: str = "grading") -> list[tuple[str, Any]]:
        n = len(items)
        if n == 0:
            return []
        from tqdm import tqdm

        workers = min(self.workers, n)
        if chunk_size is None:
            chunk_size = max(8, min(256, n // (workers * 8) or 1))
        queue: deque[list[tuple[int, tuple]]] = deque(
            [(i, tuple(items[i])) for i in range(s, min(n, s + chunk_size))] for s in range(0, n, chunk_size)
        )
        results: list[tuple[str, Any] | None] = [None] * n
        done = 0
        # per worker: [proc, conn, chunk in flight, index of the next unanswered item, last answer time]
        slots = [[*self._start(), None, 0, 0.0] for _ in range(workers)]
        bar = tqdm(total=n, desc=desc, unit="item", disable=not progress, smoothing=0.1)
        try:
            while done < n:
                for slot in slots:
                    if slot[2] is None and queue:
                        slot[2], slot[3], slot[4] = queue.popleft(), 0, time.monotonic()
                        slot[1].send(slot[2])
                busy = [s for s in slots if s[2] is not None]
                ready = wait([s[1] for s in busy], timeout=0.2)
                now = time.monotonic()
                for slot in busy:
                    failure = None
                    if slot[1] in ready:
                        try:
                            while slot[1].poll():
                                idx, res = slot[1].recv()
                                results[idx] = res
                                done += 1
                                bar.update(1)
                                slot[3] += 1
                                slot[4] = time.monotonic()
                                if slot[3] == len(slot[2]):
                                    slot[2] = None
                                    break
                        except (EOFError, OSError):
                            failure = "worker process died (crash or out of memory)"
                    if failure is None and slot[2] is not None and now - slot[4] > self.item_timeout_s:
                        failure = f"no result within {self.item_timeout_s:g} s (killed)"
                    if failure is not None and slot[2] is not None:
                        chunk, pos = slot[2], slot[3]
                        results[chunk[pos][0]] = ("timeout", failure)
                        done += 1
                        bar.update(1)
                        if chunk[pos + 1 :]:
                            queue.appendleft(chunk[pos + 1 :])
                        self._stop(slot[0], slot[1], kill=True)
                        slot[0], slot[1] = self._start()
                        slot[2] = None
        finally:
            bar.close()
            for slot in slots:
                self._stop(slot[0], slot[1], kill=slot[2] is not None)
        return results  # type: ignore[return-value]


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
