"""report: the claims verdicts (metrics/claims.json), the compact metrics/summary.json, and
reports/summary.md with PNG plots, from every metrics file and evaluation record of the pipeline."""

from __future__ import annotations

import argparse

from cotshape.pipeline import params, stage_main
from cotshape.records import write_json

SETS = ["H", "G", "W", "P", "step"]


def run_notes(p) -> list[str]:
    """What this run is, in the report's words: only what is true by construction of its params."""
    notes = []
    if p.prepare.source == "offline" and p.prepare.level == "easy":
        what = {"gsm8k": "gsm8k: generated one- and two-step word problems",
                "countdown": "countdown: three numbers from 1-9, + - * only, targets up to 30"}
        levels = "; ".join(what[t] for t in p.base.tasks if t in what)
        notes.append(
            f"- **CPU proxy.** The problems are the offline *easy* level ({levels}), sized for a 135M teacher "
            "on 2 CPU cores. They are not the paper's data (`prepare.source: hub` is)."
        )
    if p.sample.shots:
        notes.append(
            f"- **Few-shot teacher.** The teacher saw {p.sample.shots} worked exemplars before each problem "
            "(the task's `teacher_exemplars`: its own phrasing, never a training or test problem); the "
            "student is trained and evaluated on the zero-shot prompt. Exemplars shape the teacher's "
            "style: the closeness table measures it."
        )
    if p.select.balance:
        notes.append(
            "- **Equal sets.** Every training set of a task (H, G, W, P, step, mixtures) holds the same "
            "problems: those with both a correct and a wrong teacher sample (`select.balance: true`)."
        )
    else:
        notes.append("- **Unequal sets.** `select.balance: false`: each set is used whole, so set sizes differ.")
    if p.base.teacher == p.base.student:
        notes.append(
            f"- **Teacher = student** ({p.base.student}). G and W are the student's own (few-shot prompted) "
            "samples, so C1 (lower loss on G and W than on H) is largely true by construction here; "
            "a teacher other than the student tests it."
        )
    return notes


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metrics-dir", required=True)
    ap.add_argument("--plots-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    ap.add_argument("--eval-dir", required=True, help="evaluation records (paired comparisons)")
    ap.add_argument("--sets-dir", required=True, help="training sets (step-level correctness)")
    ap.add_argument("--claims-out", required=True)
    ap.add_argument("--summary-out", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.claims import judge_run
    from cotshape.report import build_report

    claims, summary, comparisons = judge_run(
        p.base.tasks, SETS, p.degrade.flawed_fractions, p.degrade.base_set, args.eval_dir, args.metrics_dir,
        args.sets_dir, margin=p.report.margin, seed=p.base.seed, n_boot=p.report.n_boot)
    write_json(args.claims_out, claims)
    write_json(args.summary_out, summary)
    path = build_report(args.metrics_dir, args.plots_dir, args.out_dir, tasks=p.base.tasks, sets=SETS,
                        fractions=p.degrade.flawed_fractions, base_set=p.degrade.base_set,
                        context={"teacher": p.base.teacher, "student": p.base.student},
                        claims=claims, comparisons=comparisons, notes=run_notes(p))
    for c in claims["claims"]:
        print(f"{c['task']} {c['id']}: {c['verdict']}")
    print(f"report written to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
