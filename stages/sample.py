"""sample@TASK-SHARD: k teacher chains of thought per training problem (resumable)."""

from __future__ import annotations

import argparse

from cotshape.core.records import read_problems
from cotshape.pipeline.stage import dvc_params, load_backend, params, stage_main
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
    from cotshape.data.sampling import run_sampling
    from cotshape.generation.base import SamplingParams
    task = get_task(args.task)
    problems = read_problems(args.problems)
    from cotshape.tracking.stage_run import begin_stage, head_jsonl

    run = begin_stage("sample", p, task=args.task, name=f"sample@{args.task}-shard{args.shard}", tags={"shard": args.shard},
                      sections=dvc_params("sample"),
                      inputs=[args.problems, args.model], outputs=[args.out], datasets={args.problems: "problems"})
    sp = SamplingParams(n=p.sample.k, temperature=p.sample.temperature, top_p=p.sample.top_p,
                        max_new_tokens=p.sample.max_new_tokens, seed=p.base.seed_of("data"))
    backend = load_backend(p, args.model, p.sample.batch_size)  # base.backend (vllm: sample.tensor_parallel_size)
    run_sampling(task, problems, backend, k=p.sample.k, params=sp, out_path=args.out, teacher=p.base.teacher,
                 shard=(args.shard, len(p.sample.shards)), shots=p.sample.shots)
    run.log_generations(head_jsonl(args.out), set="samples")


if __name__ == "__main__":
    raise SystemExit(main())
