"""sft@TASK-SET / sft_mix@TASK-p: fine-tune the student on one training set with TRL.

Runs under ``accelerate launch`` when ``sft.launcher`` is not ``none`` (the stage re-executes
itself through :func:`cotshape.train.launch_command`). An empty training set (e.g. no correct
teacher CoT at all for G) is not an error of the pipeline: the stage records it as skipped, and
evaluate/report show the set as "n/a" instead of silently evaluating the untrained student.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from cotshape.pipeline import SKIPPED, params, stage_main
from cotshape.records import read_ids, read_jsonl, restrict_to_ids, write_json, write_text


def write_loss_csv(path: str, log: list[dict]) -> None:
    rows = ["step,loss"] + [f"{e['step']},{e['loss']}" for e in log if "loss" in e]
    write_text(path, "\n".join(rows) + "\n")


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--set", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--loss-plot", required=True)
    ap.add_argument("--ids", help="select's ids.json: train only on the problems every set is compared on")
    args = ap.parse_args(argv)
    p = params()
    from cotshape.train import SFTParams, launch_command, train_sft
    sft: SFTParams = p.sft
    records = read_jsonl(args.data, required=("prompt", "completion"))
    if args.ids:
        records = restrict_to_ids(records, read_ids(args.ids))
    out = Path(args.out)

    if not records:
        reason = f"training set {args.data} is empty"
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / SKIPPED).write_text(json.dumps({"reason": reason}) + "\n")
        write_json(args.metrics, {"examples": 0, "skipped": 1})
        write_loss_csv(args.loss_plot, [])
        print(f"{args.task}-{args.set}: skipped ({reason})")
        return

    if sft.launcher != "none" and "ACCELERATE_MIXED_PRECISION" not in os.environ and "LOCAL_RANK" not in os.environ:
        cmd = launch_command(sft, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
        print("launching:", " ".join(cmd), file=sys.stderr)
        raise SystemExit(subprocess.call(cmd))

    sft = dataclasses.replace(sft, seed=p.base.seed)  # SFT is seeded with base.seed
    # under accelerate every rank trains; only the main one writes metrics and talks to MLflow
    if int(os.environ.get("RANK", "0")) != 0:
        train_sft(args.student, records, out, sft)
        return

    from cotshape.tracking import Tracker

    tracker = Tracker(p.tracking.experiment, p.tracking.tracking_uri)
    tags = {"stage": "sft", "task": args.task, "set": args.set, "student": p.base.student, "teacher": p.base.teacher}
    with tracker.run(f"sft-{args.task}-{args.set}", tags=tags,
                     params={f"sft.{k}": v for k, v in dataclasses.asdict(sft).items()}) as run:
        metrics = train_sft(args.student, records, out, sft, tracker=run)
        log = json.loads((out / "train_log.json").read_text())["log"]
        write_loss_csv(args.loss_plot, log)
        write_json(args.metrics, metrics)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        run.log_artifact(args.metrics)
        run.log_artifact(args.loss_plot)
    print(f"{args.task}-{args.set}: {metrics['examples']} examples, loss {metrics['first_loss']:.3f} -> "
          f"{metrics['final_loss']:.3f}, {metrics['tokens_per_second']:.0f} tokens/s")


if __name__ == "__main__":
    raise SystemExit(main())
