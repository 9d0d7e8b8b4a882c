"""merge_samples@TASK: merge the sampling shards, checking every (problem, sample) is there once."""

from __future__ import annotations

import argparse
from pathlib import Path

from cotshape.core.records import read_problems
from cotshape.pipeline.stage import StageError, dvc_params, params, stage_main


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--shards-dir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.data.sampling import merge_shards
    from cotshape.tracking.stage_run import begin_stage

    task = Path(args.out).stem  # data/samples/TASK.jsonl
    begin_stage("merge_samples", p, task=task, sections=dvc_params("merge_samples"),
                inputs=[args.problems, args.shards_dir], outputs=[args.out])
    paths = [Path(args.shards_dir) / f"shard-{i}.jsonl" for i in p.sample.shards]
    missing = [str(x) for x in paths if not x.exists()]
    if missing:
        raise StageError(f"missing sampling shard(s): {', '.join(missing)}")
    merge_shards(paths, args.out, problems=read_problems(args.problems), k=p.sample.k)


if __name__ == "__main__":
    raise SystemExit(main())
