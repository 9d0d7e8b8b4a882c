"""decontaminate@TASK: which training problems of every set (H, G, W, P, step-K, the mixtures) copy
or nearly copy a test problem, and the problems SFT trains on.

Checks (cotshape.data.decontaminate.check_sets): the question against every test question (exact,
word n-gram, fuzzy), the completion against every test question and solution (n-gram, exact), and
the task's structure (Countdown: numbers and target, its only check; MBPP: the tests).
A completion's n-gram counts only when it is distinctive (held by at most 1 % of the test items):
boilerplate such as "The answer is" is no copy. ``decontaminate.action``:
``report`` writes every problem of select's ids.json to data/train_ids/TASK.json; ``drop`` leaves out every
problem flagged in any set, so all sets stay trained on the same problems.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cotshape.core.artifacts import training_set_files
from cotshape.core.records import read_ids, read_jsonl, read_problems, restrict_to_ids, write_json
from cotshape.pipeline.stage import dvc_params, params, stage_main
from cotshape.tasks import get_task


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--problems", required=True, help="the task's prepared training problems")
    ap.add_argument("--test", required=True, help="the task's prepared test problems")
    ap.add_argument("--sets-dir", required=True)
    ap.add_argument("--ids", required=True, help="select's ids.json: the problems every set is compared on")
    ap.add_argument("--ids-out", required=True, help="data/train_ids/TASK.json: the problems SFT trains every set on")
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    p = params()
    c = p.decontaminate
    task = get_task(args.task)
    from cotshape.data.decontaminate import check_sets
    from cotshape.tracking.stage_run import begin_stage

    sets_dir = Path(args.sets_dir)
    files = training_set_files(sets_dir)
    run = begin_stage("decontaminate", p, task=args.task, sections=dvc_params("decontaminate"),
                      inputs=[args.problems, args.test, args.ids, *files], outputs=[args.ids_out, args.metrics])
    problems = read_problems(args.problems)
    tests = read_problems(args.test)
    ids = read_ids(args.ids)
    sets = {f.stem: restrict_to_ids(read_jsonl(f, required=("problem_id", "completion")), ids) for f in files}
    found = check_sets(problems, sets, tests, structure_key=task.structure_key,
                       text=task.decontaminate_text, ngram=c.ngram,
                       fuzzy_threshold=c.fuzzy_threshold)
    flagged = set(found["flagged_problems"])
    keep = [i for i in ids if i not in flagged] if c.action == "drop" else list(ids)
    policy = (f"select's ids.json less the {len(ids) - len(keep)} problems decontaminate flagged (action: drop)"
              if c.action == "drop" else "select's ids.json, every problem (decontaminate.action: report)")
    metrics = {
        "action": c.action, "ngram": c.ngram, "fuzzy_threshold": c.fuzzy_threshold,
        "test_problems": len(tests), "compared": len(ids), "flagged_problems": len(flagged),
        "dropped": len(ids) - len(keep), "trained": len(keep), "checks": found["checks"], "sets": found["sets"],
    }
    write_json(args.metrics, metrics)
    write_json(args.ids_out, {"problem_ids": keep, "n": len(keep), "policy": policy})
    for name, s in found["sets"].items():
        hits = ", ".join(f"{m} {n}" for m, n in s["by_method"].items() if n)
        print(f"{args.task}-{name}: {s['flagged']}/{s['records']} flagged" + (f" ({hits})" if hits else ""))
    print(f"{args.task}: {len(flagged)} of {len(ids)} problems flagged in some set; action {c.action}: "
          f"SFT trains on {len(keep)}")
    run.log_metrics({"flagged_problems": len(flagged), "dropped": len(ids) - len(keep), "trained": len(keep),
                     **{f"{name}.flagged": s["flagged"] for name, s in found["sets"].items()}})


if __name__ == "__main__":
    raise SystemExit(main())
