"""paraphrase@TASK: a model rewrites each human solution in its own words (the P set)."""

from __future__ import annotations

import argparse

from cotshape.pipeline import load_backend, params, stage_main
from cotshape.records import read_problems, write_json, write_jsonl
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
    from cotshape.generation.base import SamplingParams
    from cotshape.paraphrase import paraphrase_set
    pp = p.paraphrase
    task = get_task(args.task)
    problems = read_problems(args.problems)
    model = {"student": args.student, "teacher": args.teacher}.get(pp.model, pp.model)
    backend = load_backend(p, model, p.sample.batch_size)

    sp = SamplingParams(n=1, temperature=pp.temperature, top_p=p.sample.top_p, max_new_tokens=pp.max_new_tokens)

    def generate(prompts, seeds):
        return [outs[0].text for outs in backend.generate(prompts, sp, seeds=seeds)]

    records, metrics = paraphrase_set(task, problems, generate, retries=pp.retries,
                                      on_failure=pp.on_failure, seed=p.base.seed)
    write_jsonl(args.out, records)
    write_json(args.metrics, metrics)
    print(f"{args.task}: paraphrase success rate {metrics['success_rate']:.2f} ({metrics['paraphrased']}/{metrics['problems']})")


if __name__ == "__main__":
    raise SystemExit(main())
