"""select@TASK: one correct (G) and one wrong (W) teacher CoT per training problem.

(Named select_gw.py, not select.py: a script's folder comes first on sys.path, and a
stages/select.py would shadow the standard library's `select` module.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cotshape.core.records import read_problems, training_record, write_json, write_jsonl
from cotshape.data.select import read_verified, select_gw
from cotshape.pipeline.stage import dvc_params, params, stage_main
from cotshape.tasks import get_task


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--verified", required=True)
    ap.add_argument("--sets-dir", required=True)
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    p = params()
    task = get_task(args.task)
    from cotshape.tracking.stage_run import begin_stage, head_jsonl

    sets_dir = Path(args.sets_dir)
    run = begin_stage("select", p, task=args.task, tags={"sets": "G,W"}, sections=dvc_params("select"),
                      inputs=[args.problems, args.verified], datasets={args.verified: "samples"},
                      outputs=[sets_dir / "G.jsonl", sets_dir / "W.jsonl", sets_dir / "ids.json", args.metrics])
    problems = read_problems(args.problems)
    by_id = {x["id"]: x for x in problems}
    verified = read_verified(args.verified, [x["id"] for x in problems])
    sets, counts = select_gw(verified, [x["id"] for x in problems], seed=p.base.seed_of("data") + p.select.seed_offset,
                             balance=p.select.balance, max_verifier_errors=p.select.max_verifier_errors,
                             allow_truncated=p.select.allow_truncated)
    for name, recs in sets.items():
        out = [training_record(task.name, name, r["problem_id"], task.chat_messages(by_id[r["problem_id"]]),
                               r["completion"], source_sample=r.get("id"), extracted=r.get("extracted"))
               for r in recs]
        write_jsonl(Path(args.sets_dir) / f"{name}.jsonl", out)
    # the problems every set is compared on (sft and closeness restrict H, P and the rest to them)
    ids = [r["problem_id"] for r in sets["G"]] if p.select.balance else [x["id"] for x in problems]
    policy = ("problems with both a correct and a wrong teacher sample" if p.select.balance
              else "every training problem (select.balance: false; set sizes differ)")
    write_json(Path(args.sets_dir) / "ids.json", {"problem_ids": ids, "n": len(ids), "policy": policy})
    counts["compared"] = len(ids)
    write_json(args.metrics, counts)
    print(f"{args.task}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
    run.log_metrics(counts)
    for name in ("G", "W"):
        run.log_generations(head_jsonl(sets_dir / f"{name}.jsonl"), set=name)


if __name__ == "__main__":
    raise SystemExit(main())
