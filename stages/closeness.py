"""closeness@TASK: the base student's per-token loss and perplexity on every training set (same
masking as SFT): how close each set sits to the student's own distribution."""

from __future__ import annotations

import argparse
from pathlib import Path

from cotshape.core.artifacts import IDS_FILE, training_set_files
from cotshape.core.records import read_ids, read_json, read_jsonl, restrict_to_ids, write_json
from cotshape.pipeline.stage import dvc_params, params, stage_main


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--student", required=True)
    ap.add_argument("--sets-dir", required=True)
    ap.add_argument("--ids", help="decontaminate's data/train_ids/TASK.json: score every set on the problems SFT trains "
                    "it on (default: the sets folder's ids.json)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--problems", help="the task's prepared training problems: the plain-text prompt of each "
                    "record (base.prompt_format: plain) is built from its problem")
    args = ap.parse_args(argv)
    p = params()
    from cotshape.sft.closeness import completion_loss, loss_intervals
    sets_dir = Path(args.sets_dir)
    from cotshape.tracking.stage_run import begin_stage

    run = begin_stage("closeness", p, task=args.task, sections=dvc_params("closeness"),
                      inputs=[x for x in (args.student, args.sets_dir, args.ids) if x], outputs=[args.out])
    # load the base student once for every set
    from cotshape.core.models import resolve_device
    from cotshape.sft.closeness import load_scorer

    device = resolve_device(p.base.device)
    model, tokenizer = load_scorer(args.student, device, p.base.dtype, None)
    from cotshape.sft.tokenize import prompt_format_kwargs

    prompt_kw = prompt_format_kwargs(p.base.prompt_format, args.task, args.problems)
    # H, G, W, P; the step-degraded sets (step/step-K.jsonl, K in order) and the mixtures
    files = training_set_files(sets_dir)
    # score every set on the problems SFT trains it on (decontaminate's data/train_ids/TASK.json, else select's ids.json)
    ids_file = Path(args.ids) if args.ids else sets_dir / IDS_FILE
    ids = read_ids(ids_file) if args.ids or ids_file.exists() else None  # an explicit --ids must exist
    result, empty = {}, {}
    for path in files:
        records = read_jsonl(path, required=("prompt", "completion"))
        if ids is not None:
            records = restrict_to_ids(records, ids)
        if not records:
            empty[path.stem] = {"n_examples": 0}
            continue
        result[path.stem] = completion_loss(model, records, batch_size=p.closeness.batch_size,
                                            max_length=p.sft.max_length, device=device, dtype=p.base.dtype,
                                            tokenizer=tokenizer, per_example=True, **prompt_kw)
        print(f"{args.task}-{path.stem}: mean loss {result[path.stem]['mean_loss']:.3f}")
    write_json(args.out, {**loss_intervals(result, reference="H", seed=p.base.seed_of("eval")), **empty})
    run.log_metrics(read_json(args.out))


if __name__ == "__main__":
    raise SystemExit(main())
