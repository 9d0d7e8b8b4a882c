"""Benchmark: math verification throughput, naive math-verify loop vs :func:`verify_records`.

Builds N offline math problems x k synthetic completions (right answers in several equivalent
forms, wrong answers, symbolic answers, unparseable text; repeated answers as a sampled model
gives them), then times, in the same run:

* naive - for each completion, ``parse(gold)`` + ``parse(completion)`` + ``verify`` with
  math-verify, one after another in one process (timed on the first ``--naive-limit`` records);
* ``verify_records`` - extraction, dedupe, exact fast path, process pool over the cores.

It prints both rates, their ratio and how often the two agree on ``correct``. Rates depend on
the share of answers that need a symbolic comparison (here about 1 in 10 distinct pairs).

    .venv/bin/python bench/bench_verify.py --problems 500 --k 8
"""

from __future__ import annotations

import argparse
import random
import time


def synthetic_completions(problems: list[dict], k: int, seed: int = 0) -> list[dict]:
    """k completions per problem, a mix like a weak sampled model's: 35 % right as written,
    10 % right in another form (a/b, decimal, reordered solution set), 35 % wrong numbers
    (near misses and a few favourite numbers), 5 % wrong symbolic answers, 15 % no answer."""
    from cotshape.tasks.math import simple_value

    rng = random.Random(seed)
    records = []
    for p in problems:
        gold = p["answer"]
        v = simple_value(gold)
        for j in range(k):
            r = rng.random()
            if r < 0.35:
                ans = gold
            elif r < 0.45:
                if v is None:  # a solution set "a, b": the other order
                    ans = ", ".join(reversed(gold.split(", ")))
                elif v[0].denominator != 1:
                    ans = f"{v[0].numerator}/{v[0].denominator}"
                else:
                    ans = f"{float(v[0]):.1f}"
            elif r < 0.80:
                base = int(v[0]) if v is not None else rng.randint(-9, 9)
                ans = rng.choice([str(base + rng.choice([-2, -1, 1, 2, 10])), str(rng.choice([0, 1, 2, 12, 100])),
                                  f"\\frac{{{rng.randint(1, 9)}}}{{{rng.randint(2, 9)}}}"])
            elif r < 0.85:
                ans = rng.choice(["x + 1", "\\sqrt{2}", "2\\pi", "3x"])
            else:
                ans = None
            text = "Let me work through this step by step.\nFirst we simplify the expression. "
            text += f"Then we combine the terms ({j}).\n"
            text += f"So the final answer is $\\boxed{{{ans}}}$." if ans is not None else "I am not sure."
            records.append({"problem_id": p["id"], "completion": text})
    return records


def naive(problems: dict[str, dict], records: list[dict]) -> tuple[float, list[bool]]:
    from math_verify import parse, verify

    out = []
    t = time.perf_counter()
    for rec in records:
        gold = parse(f"${problems[rec['problem_id']]['answer']}$")
        pred = parse(rec["completion"])
        out.append(bool(verify(gold, pred)))
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=500)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--naive-limit", type=int, default=2000, help="records timed for the naive loop")
    ap.add_argument("--workers", type=int, default=None)
    args = ap.parse_args()

    import math_verify  # noqa: F401 - import cost outside the timings

    from cotshape.data.verify import verify_records
    from cotshape.execution.pool import default_workers
    from cotshape.tasks import get_task

    task = get_task("math")
    problems = {p["id"]: p for p in task.load("train", source="offline", limit=args.problems, seed=0)}
    records = synthetic_completions(list(problems.values()), args.k)
    print(f"{len(problems)} problems x {args.k} samples = {len(records)} completions, "
          f"{default_workers()} cores")

    sub = records[: args.naive_limit]
    t_naive, naive_correct = naive(problems, sub)
    rate_naive = len(sub) / t_naive
    print(f"naive (parse+parse+verify, 1 process): {len(sub)} in {t_naive:.2f} s = {rate_naive:,.0f} /s")

    t = time.perf_counter()
    out = verify_records(task, problems, records, workers=args.workers, progress=False)
    t_fast = time.perf_counter() - t
    rate_fast = len(records) / t_fast
    print(f"verify_records: {len(records)} in {t_fast:.2f} s = {rate_fast:,.0f} /s")
    print(f"speed-up: {rate_fast / rate_naive:.1f}x")
    agree = sum(o["correct"] == c for o, c in zip(out, naive_correct, strict=False)) / len(sub)
    print(f"agreement with naive on 'correct': {agree:.2%} of {len(sub)}")
    print(f"correct {sum(o['correct'] for o in out)}, parsed {sum(o['parsed'] for o in out)}, total {len(out)}")
    from cotshape.tasks.math import fast_equal

    pairs = {(problems[o["problem_id"]]["answer"], o["extracted"]) for o in out if o["parsed"]}
    symbolic = sum(fast_equal(g, e) is None for g, e in pairs)
    print(f"distinct (gold, answer) pairs {len(pairs)}; sent to math-verify {symbolic} "
          f"({symbolic / max(1, len(pairs)):.0%}); the rest settled by exact number/set comparison")


if __name__ == "__main__":
    main()
