"""sft@TASK-SET / sft_mix@TASK-p: fine-tune the student on one training set with TRL, ``sft.runs``
times (``sft.runs_by_set`` where it names the set).

Run R trains with SFT seed ``base.sft_seed + R`` (adapter init, data order) into ``OUT/run-R``; all
runs share one process (imports and the tokenizer once), so R runs cost R trainings,
not R stage starts. The metrics file holds every run (``per_run``) and their mean; the loss CSV
one curve per run (column ``run``); each run is one MLflow run tagged ``run``.

Runs under ``accelerate launch`` when ``sft.launcher`` is not ``none`` (the stage re-executes
itself through :func:`cotshape.sft.train.launch_command`); a launcher this machine cannot run
(fsdp or deepspeed without CUDA, deepspeed not installed) is refused first, in one line
(:func:`cotshape.sft.train.check_launcher`). When a training process dies, the stage fails with one
line and removes its half-written output folder. An empty training set (e.g. no correct
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

from cotshape.core.errors import StageError
from cotshape.core.records import read_ids, read_jsonl, restrict_to_ids, write_json, write_text
from cotshape.pipeline.stage import SKIPPED, dvc_params, params, stage_main


def write_loss_csv(path: str, logs: list[list[dict]]) -> None:
    """One row per logged step of every run: ``run,step,loss``."""
    rows = ["run,step,loss"] + [f"{r},{e['step']},{e['loss']}" for r, log in enumerate(logs) for e in log if "loss" in e]
    write_text(path, "\n".join(rows) + "\n")


def runs_summary(per_run: list[dict], seeds: list[int]) -> dict:
    """The set's metrics file: every run's metrics, and the mean over runs of each number."""
    out: dict = {"runs": len(per_run), "seeds": seeds}
    for key in per_run[0]:
        values = [m[key] for m in per_run if isinstance(m.get(key), (int, float))]
        if len(values) == len(per_run):
            out[key] = sum(values) / len(values) if key not in ("examples", "steps") else per_run[0][key]
    out["per_run"] = per_run
    return out


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
    ap.add_argument("--ids", help="decontaminate's data/train_ids/TASK.json (or select's ids.json): train only "
                    "on these problems, the same for every set")
    ap.add_argument("--problems", help="the task's prepared training problems: the plain-text prompt of each "
                    "record (base.prompt_format: plain) is built from its problem")
    args = ap.parse_args(argv)
    p = params()
    from cotshape.sft.params import SFTParams
    from cotshape.sft.train import check_launcher, launch_command, sft_tokenizer, train_sft
    sft: SFTParams = p.sft
    check_launcher(sft)  # before anything heavy: one line, not a traceback from inside torch
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
        write_json(args.metrics, {"examples": 0, "skipped": 1, "runs": 0})
        write_loss_csv(args.loss_plot, [])
        print(f"{args.task}-{args.set}: skipped ({reason})")
        return

    if sft.launcher != "none" and "ACCELERATE_MIXED_PRECISION" not in os.environ and "LOCAL_RANK" not in os.environ:
        cmd = launch_command(sft, [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
        print("launching:", " ".join(cmd), file=sys.stderr)
        try:
            code = subprocess.call(cmd)
        except FileNotFoundError:
            raise StageError(f"sft.launcher: {sft.launcher} runs `accelerate launch`, but {cmd[0]!r} is not "
                             "on PATH: install accelerate in this environment") from None
        if code != 0:  # a rank died (killed, out of memory, an error): no half-written model stays
            shutil.rmtree(out, ignore_errors=True)
            for path in (args.metrics, args.loss_plot):  # nor what rank 0 wrote before the launcher failed
                Path(path).unlink(missing_ok=True)
            raise StageError(f"sft.launcher: {sft.launcher}: `accelerate launch` of {sft.num_processes} processes "
                             f"failed (exit code {code}; the failing process's output is above); "
                             f"removed the unfinished {out}")
        return

    first_seed = p.base.seed_of("sft")  # base.sft_seed, else base.seed
    runs = sft.runs_for(args.set)  # sft.runs_by_set, else sft.runs
    seeds = [first_seed + r for r in range(runs)]
    from cotshape.core.artifacts import run_dir
    from cotshape.sft.tokenize import prompt_format_kwargs

    train_kw = prompt_format_kwargs(p.base.prompt_format, args.task, args.problems)
    train_kw["tokenizer"] = sft_tokenizer(args.student)  # loaded once for the runs
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0 and out.exists():  # DVC removes its outs before a stage runs; a manual run starts clean too
        shutil.rmtree(out)
    if sft.launcher != "none":  # the other ranks go on once rank 0 has cleared the folder
        from accelerate import PartialState

        PartialState().wait_for_everyone()
    # under accelerate every rank trains; only the main one writes metrics and talks to MLflow
    if rank != 0:
        for seed, r in zip(seeds, range(runs), strict=True):
            train_sft(args.student, records, run_dir(out, r), dataclasses.replace(sft, seed=seed), **train_kw)
        return

    from cotshape.tracking.run_file import write_run_file
    from cotshape.tracking.stage_run import stage_run

    per_run, logs = [], []
    for r, seed in enumerate(seeds):
        run_sft = dataclasses.replace(sft, seed=seed)
        folder = run_dir(out, r)
        with stage_run("sft", dataclasses.replace(p, sft=run_sft), task=args.task, set=args.set,
                       name=f"sft@{args.task}-{args.set}-run-{r}", tags={"run": r},
                       sections=dvc_params("sft"), inputs=[x for x in (args.data, args.ids, args.student) if x],
                       outputs=[folder], datasets={args.data: "training"}) as run:
            metrics = {"run": r, "seed": seed, **train_sft(args.student, records, folder, run_sft, tracker=run, **train_kw)}
            logs.append(json.loads((folder / "train_log.json").read_text())["log"])
            run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
            run.log_artifact(folder / "train_log.json")  # the loss per step, and the params it ran with
            if (folder / "README.md").exists():  # TRL's model card
                run.log_artifact(folder / "README.md")
            write_run_file(folder, run)  # evaluate links its run to this one
        per_run.append(metrics)
        print(f"{args.task}-{args.set} run {r} (seed {seed}): {metrics['examples']} examples, loss "
              f"{metrics['first_loss']:.3f} -> {metrics['final_loss']:.3f}, {metrics['tokens_per_second']:.0f} tokens/s")
    write_loss_csv(args.loss_plot, logs)
    write_json(args.metrics, runs_summary(per_run, seeds))


if __name__ == "__main__":
    raise SystemExit(main())
