"""paraphrase@TASK: a model rewrites each human solution in its own words (the P set), and the
stage checks what that did: the untrained student's loss on the paraphrases against its loss on
the human solutions of the same problems (``closeness_to_student`` in the metrics), next to the
share of P that fell back to H (``fallback_share``)."""

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
        return [o[0] for o in outs]  # Completion: text and finish_reason (a cut paraphrase fails)

    records, metrics = paraphrase_set(task, problems, generate, retries=pp.retries,
                                      on_failure=pp.on_failure, seed=p.base.seed_of("data"), prompt_format=fmt,
                                      tokenizer=backend.tokenizer, max_new_tokens=pp.max_new_tokens,
                                      allow_truncated=pp.allow_truncated)
    metrics["backend"] = backend.name
    backend.close()
    metrics["closeness_to_student"] = closeness_to_student(p, task, problems, records, args.student, args.problems)
    write_jsonl(args.out, records)
    write_json(args.metrics, metrics)
    run.log_metrics(metrics)
    run.log_generations(records, set="P")
    print(f"{args.task}: paraphrase success rate {metrics['success_rate']:.2f} ({metrics['paraphrased']}/{metrics['problems']}; "
          f"{metrics['truncated']} attempts cut at max_new_tokens)")
    c = metrics["closeness_to_student"]
    if c.get("loss_P") is not None:
        print(f"{args.task}: the student's loss per token on the paraphrased problems: P {c['loss_P']:.3f}, "
              f"their H {c['loss_H']:.3f} (H - P {c['H_minus_P']:+.3f}); {100 * metrics['fallback_share']:.0f} % of P is H")


def closeness_to_student(p, task, problems, records, student, problems_path) -> dict:
    """Whether the paraphrase moved H towards the student (issue #24): the untrained student's
    per-token loss (cotshape.sft.closeness, as the closeness stage scores every set) on the
    paraphrased records of P and on the human solutions of the same problems, with the bootstrap
    interval of ``H_minus_P`` (> 0: P sits closer to the student than H). Records that fell back
    to H are left out of both (they are H); ``fallback_share`` of the stage's metrics counts them."""
    from cotshape.core.models import resolve_device
    from cotshape.sft.closeness import completion_loss, load_scorer, loss_intervals
    from cotshape.sft.tokenize import prompt_format_kwargs

    paraphrased = [r for r in records if r["paraphrased"]]
    out: dict = {"paraphraser": p.paraphrase.model, "problems": len(paraphrased)}
    if not paraphrased:
        return {**out, "loss_P": None, "loss_H": None, "H_minus_P": None, "reason": "no paraphrase kept its answer"}
    by_id = {x["id"]: x for x in problems}
    human = [dict(r, completion=task.human_completion(by_id[r["problem_id"]])) for r in paraphrased]
    device = resolve_device(p.base.device)
    model, tokenizer = load_scorer(student, device, p.base.dtype, None)
    kw = prompt_format_kwargs(p.base.prompt_format, task.name, problems_path)
    scored = {name: completion_loss(model, recs, batch_size=p.closeness.batch_size, max_length=p.sft.max_length,
                                    device=device, dtype=p.base.dtype, tokenizer=tokenizer, per_example=True, **kw)
              for name, recs in (("H", human), ("P", paraphrased))}
    res = loss_intervals(scored, reference="H", seed=p.base.seed_of("eval"), n_boot=p.report.n_boot)
    return {**out, "loss_P": res["P"]["mean_loss"], "loss_H": res["H"]["mean_loss"],
            "H_minus_P": res["P"]["minus_ref"], "H_minus_P_ci95": res["P"]["minus_ref_ci95"]}


if __name__ == "__main__":
    raise SystemExit(main())
