"""The sandbox's public API: run model-written programs and tests in isolation.

:func:`run_program`, :func:`run_tests` and :func:`run_tests_many` share one
:class:`SandboxPool` per mode (:func:`shared_pool`), closed at interpreter exit;
:func:`self_test` checks once that the sandbox works. docs/sandbox.md says what is isolated.
"""

from __future__ import annotations

import atexit
import os
import threading

from cotshape.core.errors import SandboxError
from cotshape.execution.sandbox.grading import ExecutionResult
from cotshape.execution.sandbox.host import SandboxPool
from cotshape.execution.sandbox.isolation import (
    MODE_ENV,
    SandboxModeError,
    SandboxUnavailable,
    SandboxWarning,
    isolation_report,
    resolve_mode,
)

__all__ = [
    "ExecutionResult",
    "SandboxPool",
    "SandboxError",
    "SandboxModeError",
    "SandboxUnavailable",
    "SandboxWarning",
    "isolation_report",
    "run_program",
    "run_tests",
    "run_tests_many",
    "self_test",
    "shared_pool",
]


_pools: dict[str, SandboxPool] = {}
_pools_lock = threading.Lock()


def shared_pool(mode: str | None) -> SandboxPool:
    """The process-wide pool of the mode ``mode`` resolves to (created on first use)."""
    resolved = resolve_mode(mode)
    with _pools_lock:
        pool = _pools.get(resolved)
        if pool is None:
            pool = _pools[resolved] = SandboxPool(resolved)
        return pool


@atexit.register
def _close_pools() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        p.close()


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024, *, max_file_mb: int = 16,
                nproc: int = 64, max_output_bytes: int = 1_000_000, mode: str | None = None) -> ExecutionResult:
    """Run a whole program; it passes when it runs to its end without an exception."""
    return shared_pool(mode).run([("program", source)], timeout_s=timeout_s, memory_mb=memory_mb,
                                 max_file_mb=max_file_mb, nproc=nproc, max_output_bytes=max_output_bytes)


def _test_parts(code: str, tests: list[str], setup_code: str = "") -> list[tuple[str, str]]:
    if isinstance(tests, str):
        raise TypeError("tests must be a list of assert statements, not a string")
    # the (trusted) setup code runs after the candidate code so the code cannot redefine it
    parts = [("code", code)]
    if setup_code and setup_code.strip():
        parts.append(("setup code", setup_code))
    parts += [(f"test {i + 1}", t) for i, t in enumerate(tests)]
    return parts


def run_tests(code: str, tests: list[str], setup_code: str = "", timeout_s: float = 10.0,
              memory_mb: int = 1024, *, max_file_mb: int = 16, nproc: int = 64,
              max_output_bytes: int = 1_000_000, mode: str | None = None) -> ExecutionResult:
    """Run ``code``, then ``setup_code``, then each test (assert statements) in one namespace.

    Passed only if every part ran without an exception (proved by the run's nonce).
    """
    return shared_pool(mode).run(_test_parts(code, tests, setup_code), timeout_s=timeout_s,
                                 memory_mb=memory_mb, max_file_mb=max_file_mb, nproc=nproc,
                                 max_output_bytes=max_output_bytes)


_self_tested: set[str] = set()


def self_test(mode: str | None = None) -> str:
    """Check, once per process and mode, that the sandbox runs a trivial program; returns the
    resolved mode. A sandbox that cannot (bad mode, bwrap required but missing, a server that
    does not start) raises :class:`SandboxError`: graded programs would all fail for a reason
    that has nothing to do with them."""
    resolved = resolve_mode(mode)
    if resolved not in _self_tested:
        res = run_program("pass", timeout_s=30.0, mode=resolved)
        if not res.passed:
            raise SandboxError(f"sandbox self-test failed: {res.status}: {res.reason} (mode {resolved}); "
                               f"cotshape.execution.sandbox.api.isolation_report() says why; {MODE_ENV} picks the mode")
        _self_tested.add(resolved)
    return resolved


def run_tests_many(jobs: list[dict], workers: int | None = None, progress: bool = False,
                   mode: str | None = None) -> list[ExecutionResult]:
    """:func:`run_tests` for many jobs in parallel; results in the order of ``jobs``.

    Each job is a dict with ``code``, ``tests`` and optionally ``setup_code``, ``timeout_s``,
    ``memory_mb``. ``workers`` defaults to the number of CPUs. The sandbox passes
    :func:`self_test` first, or :class:`SandboxError` is raised.
    """
    from concurrent.futures import ThreadPoolExecutor

    allowed = {"code", "tests", "setup_code", "timeout_s", "memory_mb"}
    for i, job in enumerate(jobs):
        if not isinstance(job, dict) or "code" not in job or "tests" not in job:
            raise ValueError(f"run_tests_many: job {i} must be a dict with 'code' and 'tests'")
        if set(job) - allowed:
            raise ValueError(f"run_tests_many: job {i} has unknown keys {sorted(set(job) - allowed)}; "
                             f"allowed: {sorted(allowed)}")
    if workers is not None and workers < 1:
        raise ValueError(f"run_tests_many: workers={workers}: must be >= 1")
    workers = min(workers or os.cpu_count() or 1, max(1, len(jobs)))
    if jobs:
        mode = self_test(mode)
    pool = shared_pool(mode)

    def one(job: dict) -> ExecutionResult:
        return pool.run(_test_parts(job["code"], job["tests"], job.get("setup_code") or ""),
                        timeout_s=job.get("timeout_s", 10.0), memory_mb=job.get("memory_mb", 1024))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="prog", desc="sandbox", smoothing=0.1)
    results: list[ExecutionResult] = []
    with ThreadPoolExecutor(workers) as ex:
        for res in ex.map(one, jobs):
            results.append(res)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return results
