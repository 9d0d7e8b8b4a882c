"""sample@TASK-SHARD: k teacher chains of thought per training problem (resumable)."""

from __future__ import annotations

import argparse

from cotshape.pipeline import load_backend, params, stage_main
from cotshape.records import read_problems
from cotshape.tasks import get_task


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--shard", type=int, required=True)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.generation.base import SamplingParams
    from cotshape.sampling import run_sampling
    task = get_task(args.task)
    problems = read_problems(args.problems)
    sp = SamplingParams(n=p.sample.k, temperature=p.sample.temperature, top_p=p.sample.top_p,
                        max_new_tokens=p.sample.max_new_tokens, seed=p.base.seed)
    backend_kw = {"tensor_parallel_size": p.sample.tensor_parallel_size} if p.sample.backend == "vllm" else {}
    backend = load_backend(p, args.model, p.sample.batch_size, name=p.sample.backend, **backend_kw)
    run_sampling(task, problems, backend, k=p.sample.k, params=sp, out_path=args.out, teacher=p.base.teacher,
                 shard=(args.shard, len(p.sample.shards)), shots=p.sample.shots)


if __name__ == "__main__":
    raise SystemExit(main())
