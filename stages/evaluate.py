"""evaluate@TASK-SET / evaluate_mix@TASK-p / evaluate_base@TASK: greedy decoding on the test
problems, graded by the task verifier; both accuracy definitions.

A set's SFT folder holds one model per training run (``run-R``, ``sft.runs``): every run is
evaluated in this one process (imports, problems, prompts, the tokenizer and, on CPU, the LoRA
base model once: each run's adapter is merged onto the base model in turn, its weights restored
from a copy before each merge). The records carry their ``run``; the metrics file has each run's
metrics (``per_run``), their mean and the interval with the run as the unit
(:func:`cotshape.evaluation.evaluate.summarize_runs`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cotshape.core.artifacts import SFT_MARKER, SKIPPED, run_dirs
from cotshape.core.records import read_json, read_problems, write_json, write_jsonl
from cotshape.pipeline.stage import StageError, dvc_params, load_backend, params, stage_main
from cotshape.tasks import get_task


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--set", required=True)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--model", required=True, help="a model folder or an SFT output folder")
    ap.add_argument("--checkpoint", help="evaluate the intermediate checkpoint of an SFT output folder instead "
                    "of its final model: step-N (sft.save_steps) or N, i.e. MODEL/checkpoints/step-N")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.evaluation.evaluate import evaluate, summarize_runs
    task = get_task(args.task)
    problems = read_problems(args.problems)
    set_dir = Path(args.model)
    if (set_dir / SKIPPED).exists():
        reason = read_json(set_dir / SKIPPED)["reason"]
        write_jsonl(args.out, [])
        write_json(args.metrics, {"n": 0, "skipped": 1})
        print(f"{args.task}-{args.set}: not evaluated ({reason})")
        return
    # a set's SFT folder holds one folder per training run (sft.runs); a plain model folder (the
    # untrained student of evaluate_base) is one "run"
    runs = run_dirs(set_dir) or [set_dir]
    models = [_checkpoint(d, args.checkpoint) if args.checkpoint else d for d in runs]
    reached = [m for m in models if not (m / SKIPPED).exists()]  # SKIPPED: a checkpoint step not reached
    if not reached:
        reason = read_json(models[0] / SKIPPED).get("reason", "checkpoint not reached")
        write_jsonl(args.out, [])
        write_json(args.metrics, {"n": 0, "skipped": 1})
        print(f"{args.task}-{args.set}: not evaluated ({reason})")
        return
    if len(reached) != len(models):
        raise StageError(f"{set_dir}: checkpoint {args.checkpoint} was reached by {len(reached)} of "
                         f"{len(models)} training runs; the runs of a set must train the same steps")

    from cotshape.tracking.run_file import read_run_file
    from cotshape.tracking.stage_run import begin_stage

    run = begin_stage("evaluate", p, task=args.task, set=args.set, sections=dvc_params("evaluate"),
                      inputs=[args.problems, args.model, *_base_models(models)], outputs=[args.out, args.metrics],
                      datasets={args.problems: "evaluation"},
                      tags={"model": args.model, "runs": len(models),
                            "cotshape.sft_run_id": ",".join(filter(None, ((read_run_file(d) or {}).get("run_id")
                                                                          for d in runs))) or None,
                            "checkpoint": args.checkpoint})
    # every run answers the same problems in the same order: table is the runs x problems table
    all_records, per_run, table = [], [], []
    shared: dict = {}  # what the runs share: the LoRA base model and the tokenizer, loaded once
    for r, model_dir in enumerate(models):
        backend = _backend(p, model_dir, shared)
        # all prompts in one call: the backend batches (and refills) internally
        records, metrics = evaluate(task, problems, backend, max_new_tokens=p.evaluate.max_new_tokens,
                                    prompt_format=p.base.prompt_format, scoring=p.evaluate.scoring)
        metrics["backend"] = backend.name
        metrics["dtype"] = backend.dtype
        del backend
        all_records += [{"run": r, **rec} for rec in records]
        table.append([rec["correct"] for rec in records])
        per_run.append(metrics)
        if len(models) > 1:
            print(f"{args.task}-{args.set} run {r}: accuracy {metrics['accuracy']:.3f} (n={metrics['n']})")
    metrics = summarize_runs(per_run, table)
    metrics["provenance"] = _provenance(p, per_run[0]["backend"], per_run[0]["dtype"])
    write_jsonl(args.out, all_records)
    write_json(args.metrics, metrics)
    run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
    for r, m in enumerate(per_run):
        run.log_metrics({"run_accuracy": m["accuracy"]}, step=r)
    run.log_artifact(args.metrics)
    run.log_generations([rec for rec in all_records if rec["run"] == 0], set=args.set)
    lo, hi = metrics["ci95"]
    print(f"{args.task}-{args.set}: accuracy {metrics['accuracy']:.3f} [{lo:.3f}, {hi:.3f}] over {len(models)} "
          f"run(s), accuracy_parsed {metrics['accuracy_parsed']:.3f}, parse rate {metrics['parse_rate']:.3f} "
          f"(n={metrics['n']})")


def _checkpoint(run_folder: Path, checkpoint: str) -> Path:
    """The folder of checkpoint ``step-N`` (or ``N``) of one training run (sft.save_steps)."""
    from cotshape.sft.checkpoints import checkpoint_dir

    step = checkpoint.removeprefix("step-")
    if not step.isdigit():
        raise StageError(f"--checkpoint {checkpoint!r}: expected step-N or N, e.g. step-100")
    folder = checkpoint_dir(run_folder, int(step))
    if not (folder / SFT_MARKER).exists() and not (folder / SKIPPED).exists():  # SKIPPED: step not reached
        found = sorted(p.name for p in folder.parent.glob("step-*")) if folder.parent.is_dir() else []
        raise StageError(f"{folder}: no such checkpoint (has: {', '.join(found) or 'none'}); "
                         "list its step in sft.save_steps and rerun the sft stage")
    return folder


def _base_models(models: list[Path]) -> list[str]:
    """The base models a LoRA folder is merged onto: inputs of the evaluation too."""
    found = []
    for m in models:
        marker = read_json(m / SFT_MARKER) if (m / SFT_MARKER).exists() else {}
        if not marker.get("merged", True) and marker["base_model"] not in found:
            found.append(marker["base_model"])
    return found


def _provenance(p, backend: str, dtype: str | None) -> dict:
    """What produced these numbers (cotshape.core.provenance): commit, versions, hardware, batch.
    ``dtype``: what the backend loaded (None: resolved from base.dtype as the backends do)."""
    from cotshape.core.models import resolve_device, resolve_dtype
    from cotshape.core.provenance import provenance

    device = resolve_device(p.base.device)
    dtype = dtype or str(resolve_dtype(p.base.dtype, device)).removeprefix("torch.")
    return provenance(backend=backend, dtype=dtype,
                      device=device, batch_size={"evaluate": p.evaluate.batch_size},
                      tensor_parallel_size=p.sample.tensor_parallel_size)


def _backend(p, model_dir: Path, shared: dict):
    """The generation backend of one model folder; an SFT folder (LoRA or full) is loaded with
    :func:`cotshape.sft.checkpoints.load_trained` (an adapter merged onto its base, in memory; for vllm,
    load_backend merges it into a temporary folder). ``shared`` keeps what the runs of the set
    share across calls: on CPU the LoRA base model (:class:`~cotshape.sft.checkpoints.LoraBase`:
    loaded once, its weights restored before each merge) and the tokenizer."""
    kw = {}
    if p.base.backend == "transformers" and (model_dir / SFT_MARKER).exists():
        from cotshape.core.models import load_tokenizer, resolve_device
        from cotshape.sft.checkpoints import LoraBase, load_trained

        marker = read_json(model_dir / SFT_MARKER)
        device = resolve_device(p.base.device)
        base = marker["base_model"]
        if not marker.get("merged", True) and device == "cpu" and "base" not in shared:
            shared["base"] = LoraBase(base, dtype=p.base.dtype)
        kw["model"] = load_trained(model_dir, device=device, dtype=p.base.dtype, shared_base=shared.get("base"))
        # SFT does not change the tokenizer; a LoRA folder has no config.json, so take the base's
        if "tokenizer" not in shared:  # every run of the set has the same base
            shared["tokenizer"] = load_tokenizer(base)
        kw["tokenizer"] = shared["tokenizer"]
    return load_backend(p, model_dir, p.evaluate.batch_size, **kw)

if __name__ == "__main__":
    raise SystemExit(main())
