"""prepare@TASK: load train/test problems (with human solutions) and write the H set."""

from __future__ import annotations

import argparse

from cotshape.core.records import training_record, write_jsonl
from cotshape.pipeline.stage import StageError, dvc_params, params, stage_main
from cotshape.tasks import get_task


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--train-out", required=True)
    ap.add_argument("--test-out", required=True)
    ap.add_argument("--human-out", required=True)
    args = ap.parse_args(argv)
    p = params()
    task = get_task(args.task)
    from cotshape.tracking.stage_run import begin_stage

    run = begin_stage("prepare", p, task=args.task, set="H", sections=dvc_params("prepare"),
                      outputs=[args.train_out, args.test_out, args.human_out])
    level = p.prepare.level if p.prepare.source == "offline" else "full"
    train = task.load("train", source=p.prepare.source, limit=p.prepare.train_size, seed=p.base.seed, level=level)
    test = task.load("test", source=p.prepare.source, limit=p.prepare.test_size, seed=p.base.seed, level=level)
    overlap = {x["id"] for x in train} & {x["id"] for x in test}
    if overlap:
        raise StageError(f"task {args.task}: train and test share problem ids, e.g. {sorted(overlap)[:3]}")
    human = [training_record(task.name, "H", x["id"], task.chat_messages(x), task.human_completion(x)) for x in train]
    write_jsonl(args.train_out, train)
    write_jsonl(args.test_out, test)
    write_jsonl(args.human_out, human)
    run.log_metrics({"train_problems": len(train), "test_problems": len(test)})
    run.log_generations(human, set="H")
    print(f"{args.task}: {len(train)} train, {len(test)} test problems")


if __name__ == "__main__":
    raise SystemExit(main())
