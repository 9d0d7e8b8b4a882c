"""evaluate@TASK-SET / evaluate_mix@TASK-p / evaluate_base@TASK: greedy decoding on the test
problems, graded by the task verifier; both accuracy definitions."""

from __future__ import annotations

import argparse
from pathlib import Path

from cotshape.pipeline import SKIPPED, load_backend, params, stage_main
from cotshape.records import read_json, read_problems, write_json, write_jsonl
from cotshape.tasks import get_task
from cotshape.train import MARKER as SFT_MARKER


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--set", required=True)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--model", required=True, help="a model folder or an SFT output folder")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.evaluate import evaluate
    task = get_task(args.task)
    problems = read_problems(args.problems)
    model_dir = Path(args.model)
    if (model_dir / SKIPPED).exists():
        reason = read_json(model_dir / SKIPPED)["reason"]
        write_jsonl(args.out, [])
        write_json(args.metrics, {"n": 0, "skipped": 1})
        print(f"{args.task}-{args.set}: not evaluated ({reason})")
        return

    kw = {}
    if (model_dir / SFT_MARKER).exists():
        # an SFT output folder: a LoRA adapter is merged onto its base model here
        from cotshape.models import load_tokenizer, resolve_device
        from cotshape.train import load_trained

        kw["model"] = load_trained(model_dir, device=resolve_device(p.base.device), dtype=p.base.dtype)
        # SFT does not change the tokenizer; a LoRA folder has no config.json, so take the base's
        kw["tokenizer"] = load_tokenizer(read_json(model_dir / SFT_MARKER)["base_model"])
    backend = load_backend(p, model_dir, p.evaluate.batch_size, **kw)
    # all prompts in one call: the backend batches (and refills) internally
    records, metrics = evaluate(task, problems, backend, max_new_tokens=p.evaluate.max_new_tokens)
    write_jsonl(args.out, records)
    write_json(args.metrics, metrics)

    from cotshape.tracking import Tracker

    tracker = Tracker(p.tracking.experiment, p.tracking.tracking_uri)
    tags = {"stage": "evaluate", "task": args.task, "set": args.set, "student": p.base.student,
            "teacher": p.base.teacher}
    with tracker.run(f"evaluate-{args.task}-{args.set}", tags=tags,
                     params={"evaluate.max_new_tokens": p.evaluate.max_new_tokens}) as run:
        run.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float))})
        run.log_artifact(args.metrics)
    print(f"{args.task}-{args.set}: accuracy {metrics['accuracy']:.3f}, "
          f"accuracy_parsed {metrics['accuracy_parsed']:.3f}, parse rate {metrics['parse_rate']:.3f} (n={metrics['n']})")


if __name__ == "__main__":
    raise SystemExit(main())
