"""sft@TASK-SET / sft_mix@TASK-p: fine-tune the student on one training set with TRL.

Runs under ``accelerate launch`` when ``sft.launcher`` is not ``none`` (the stage re-executes
itself through :func:`cotshape.sft.train.launch_command`). An empty training set (e.g. no correct
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

from cotshape.core.records import read_ids, read_jsonl, restrict_to_ids, write_json, write_text
from cotshape.pipeline.stage import SKIPPED, dvc_params, params, stage_main


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
    ap.add_argument("--problems", help="the task's prepared training problems: the plain-text prompt of each "
                    "record (base.prompt_format: plain) is built from its problem")
    args = ap.parse_args(argv)
    p = params()
    from cotshape.sft.train import SFTParams, launch_command, train_sft
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

    sft = dataclasses.replace(sft, seed=p.base.seed_of("sft"))  # base.sft_seed, else base.seed
    from cotshape.sft.train import prompt_format_kwargs

    prompt_kw = prompt_format_kwargs(p.base.prompt_format, args.task, args.problems)
    # under accelerate every rank trains; only the main one writes metrics and talks to MLflow
    if int(os.environ.get("RANK", "0")) != 0:
        train_sft(args.student, records, out, sft, **prompt_kw)
        return

    from cotshape.tracking.tracker import stage_run, write_run_file

    with stage_run("sft", dataclasses.replace(p, sft=sft), task=args.task, set=args.set,
                   sections=dvc_params("sft"), inputs=[x for x in (args.data, args.ids, args.student) if x],
                   outputs=[args.out, args.metrics, args.loss_plot], datasets={args.data: "training"}) as run:
        metrics = train_sft(args.student, records, out, sft, tracker=run, **prompt_kw)
        log = json.loads((out / "train_log.json").read_text())["log"]
        write_loss_csv(args.loss_plot, log)
        write_json(args.metrics, metrics)
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        run.log_artifact(args.metrics)
        run.log_artifact(args.loss_plot)
        if (out / "README.md").exists():  # TRL's model card
            run.log_artifact(out / "README.md")
        write_run_file(out, run)  # evaluate links its run to this one
    print(f"{args.task}-{args.set}: {metrics['examples']} examples, loss {metrics['first_loss']:.3f} -> "
          f"{metrics['final_loss']:.3f}, {metrics['tokens_per_second']:.0f} tokens/s")


if __name__ == "__main__":
    raise SystemExit(main())
