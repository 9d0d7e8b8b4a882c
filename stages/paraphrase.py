"""paraphrase@TASK: a model rewrites each human solution in its own words (the P set)."""

from __future__ import annotations

import argparse

from cotshape.core.records import read_problems, write_json, write_jsonl
from cotshape.pipeline.stage import (
    dvc_params,
    generate_with_progress,
    load_backend,
    params,
    stage_main,
)
from cotshape.tasks import get_task


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--student", required=True, help="folder of the materialised student")
    ap.add_argument("--teacher", required=True, help="folder of the materialised teacher")
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.data.paraphrase import paraphrase_set
    from cotshape.generation.base import SamplingParams
    pp = p.paraphrase
    task = get_task(args.task)
    problems = read_problems(args.problems)
    model = {"student": args.student, "teacher": args.teacher}.get(pp.model, pp.model)
    from cotshape.tracking.stage_run import begin_stage

    run = begin_stage("paraphrase", p, task=args.task, set="P", tags={"model": model},
                      sections=dvc_params("paraphrase"),
                      inputs=[args.problems, model], outputs=[args.out, args.metrics], datasets={args.problems: "problems"})
    backend = load_backend(p, model, p.sample.batch_size)

    import dataclasses

    # the student paraphrases in base.prompt_format (a base student: plain text, its stop strings);
    # the teacher, an instruct model, always in chat
    fmt = p.base.prompt_format if pp.model == "student" else "chat"
    fixed = 128 if pp.max_new_tokens == "auto" else pp.max_new_tokens  # auto: a budget per problem
    sp = SamplingParams(n=1, temperature=pp.temperature, top_p=p.sample.top_p, max_new_tokens=fixed,
                        stop=task.stop_strings(fmt))

    def generate(prompts, seeds, max_new_tokens=None):
        spp = sp if max_new_tokens is None else dataclasses.replace(sp, max_new_tokens=max_new_tokens)
        outs = generate_with_progress(backend, prompts, spp, f"paraphrase {task.name}", seeds=seeds)
        return [o[0].text for o in outs]

    records, metrics = paraphrase_set(task, problems, generate, retries=pp.retries,
                                      on_failure=pp.on_failure, seed=p.base.seed_of("data"), prompt_format=fmt,
                                      tokenizer=backend.tokenizer, max_new_tokens=pp.max_new_tokens)
    metrics["backend"] = backend.name
    write_jsonl(args.out, records)
    write_json(args.metrics, metrics)
    run.log_metrics(metrics)
    run.log_generations(records, set="P")
    print(f"{args.task}: paraphrase success rate {metrics['success_rate']:.2f} ({metrics['paraphrased']}/{metrics['problems']})")


if __name__ == "__main__":
    raise SystemExit(main())
