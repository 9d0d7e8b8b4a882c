"""verify@TASK: grade every teacher sample with the task's verifier."""

from __future__ import annotations

import argparse

from cotshape.core.records import read_json, read_jsonl, read_problems, write_json, write_jsonl
from cotshape.pipeline.stage import params, stage_main
from cotshape.tasks import get_task


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--samples", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    params()  # validated even though verify reads none of them: bad params stop every stage
    from cotshape.data.verify import count_verifier_errors, verify_records
    task = get_task(args.task)
    from cotshape.tracking.stage_run import begin_stage, head_jsonl

    run = begin_stage("verify", params(), task=args.task, inputs=[args.problems, args.samples],
                      outputs=[args.out, args.metrics])
    problems = {x["id"]: x for x in read_problems(args.problems)}
    samples = read_jsonl(args.samples, required=("problem_id", "sample_index", "completion"))
    verified = verify_records(task, problems, samples)
    n = len(verified)
    n_correct = sum(r["correct"] for r in verified)
    n_parsed = sum(r["parsed"] for r in verified)
    write_jsonl(args.out, verified)
    write_json(args.metrics, {
        "samples": n,
        "teacher_accuracy": n_correct / n if n else 0.0,
        "teacher_parse_rate": n_parsed / n if n else 0.0,
        "truncated": sum(r.get("finish_reason") == "length" for r in verified),
        "verifier_errors": count_verifier_errors(verified),
    })
    print(f"{args.task}: {n_correct}/{n} samples correct, {n_parsed} parsed")
    run.log_metrics(read_json(args.metrics))
    run.log_generations(head_jsonl(args.out), set="samples")


if __name__ == "__main__":
    raise SystemExit(main())
