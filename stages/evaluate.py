"""evaluate@TASK-SET / evaluate_mix@TASK-p / evaluate_base@TASK: greedy decoding on the test
problems, graded by the task verifier; both accuracy definitions."""

from __future__ import annotations

import argparse
from pathlib import Path

from cotshape.core.artifacts import SFT_MARKER, SKIPPED
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
    from cotshape.evaluation.evaluate import evaluate
    task = get_task(args.task)
    problems = read_problems(args.problems)
    model_dir = Path(args.model)
    if args.checkpoint and not (model_dir / SKIPPED).exists():  # a skipped SFT has no checkpoints either
        from cotshape.sft.train import checkpoint_dir

        step = args.checkpoint.removeprefix("step-")
        if not step.isdigit():
            raise StageError(f"--checkpoint {args.checkpoint!r}: expected step-N or N, e.g. step-100")
        model_dir = checkpoint_dir(model_dir, int(step))
        if not (model_dir / SFT_MARKER).exists() and not (model_dir / SKIPPED).exists():  # SKIPPED: step not reached
            found = sorted(p.name for p in model_dir.parent.glob("step-*")) if model_dir.parent.is_dir() else []
            raise StageError(f"{model_dir}: no such checkpoint (has: {', '.join(found) or 'none'}); "
                             "list its step in sft.save_steps and rerun the sft stage")
    if (model_dir / SKIPPED).exists():
        reason = read_json(model_dir / SKIPPED)["reason"]
        write_jsonl(args.out, [])
        write_json(args.metrics, {"n": 0, "skipped": 1})
        print(f"{args.task}-{args.set}: not evaluated ({reason})")
        return
    from cotshape.tracking.tracker import begin_stage, read_run_file

    sft_run = read_run_file(Path(args.model)) or {}  # the SFT run that trained this folder (or checkpoint), if tracked
    # a LoRA folder's base model (models/student) is an input too: the adapter is merged onto it
    marker = read_json(model_dir / SFT_MARKER) if (model_dir / SFT_MARKER).exists() else {}
    base_model = [marker["base_model"]] if not marker.get("merged", True) else []
    run = begin_stage("evaluate", p, task=args.task, set=args.set,
                      sections=dvc_params("evaluate"),
                      inputs=[args.problems, args.model, *base_model], outputs=[args.out, args.metrics],
                      datasets={args.problems: "evaluation"},
                      tags={"model": args.model, "cotshape.sft_run_id": sft_run.get("run_id"),
                            "checkpoint": model_dir.name if args.checkpoint else None})

    kw = {}
    if p.base.backend == "transformers" and marker:
        # an SFT output folder: a LoRA adapter is merged onto its base model here (in memory;
        # for vllm, load_backend merges it into a temporary folder)
        from cotshape.core.models import load_tokenizer, resolve_device
        from cotshape.sft.train import load_trained

        kw["model"] = load_trained(model_dir, device=resolve_device(p.base.device), dtype=p.base.dtype)
        # SFT does not change the tokenizer; a LoRA folder has no config.json, so take the base's
        kw["tokenizer"] = load_tokenizer(marker["base_model"])
    backend = load_backend(p, model_dir, p.evaluate.batch_size, **kw)
    # all prompts in one call: the backend batches (and refills) internally
    records, metrics = evaluate(task, problems, backend, max_new_tokens=p.evaluate.max_new_tokens,
                                prompt_format=p.base.prompt_format, scoring=p.evaluate.scoring)
    metrics["backend"] = backend.name
    write_jsonl(args.out, records)
    write_json(args.metrics, metrics)
    run.log_metrics(metrics)
    run.log_artifact(args.metrics)
    run.log_generations(records, set=args.set)
    print(f"{args.task}-{args.set}: accuracy {metrics['accuracy']:.3f}, "
          f"accuracy_parsed {metrics['accuracy_parsed']:.3f}, parse rate {metrics['parse_rate']:.3f} (n={metrics['n']})")


if __name__ == "__main__":
    raise SystemExit(main())
