"""A pool of worker processes that runs one function over many items, each under a hard deadline.

Math grading runs math-verify (sympy) in it: a worker that gives no answer within
``item_timeout_s`` (sympy stuck in C code, where no alarm reaches it) or dies is killed and
replaced, that item comes back as ``("timeout", message)``, and the rest of its chunk is retried.
Standard library only; it knows nothing about tasks or records.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait
from typing import Any


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
