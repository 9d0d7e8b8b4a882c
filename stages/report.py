"""report: the claims verdicts (metrics/claims.json), the compact metrics/summary.json, and
reports/summary.md with PNG plots, from every metrics file and evaluation record of the pipeline."""

from __future__ import annotations

import argparse

from cotshape.core.records import write_json
from cotshape.pipeline.stage import dvc_params, params, stage_main

#: the trained sets besides the mixtures; the step-degraded sets follow degrade.step_k
BASE_SETS = ["H", "G", "W", "P"]


def trained_sets(p) -> list[str]:
    """H, G, W, P and one step-degraded set per k of ``degrade.step_k`` (``step-1``, ...)."""
    from cotshape.core.artifacts import step_set_name

    return [*BASE_SETS, *(step_set_name(k) for k in p.degrade.step_k)]


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
    else:
        notes.append(
            f"- **Teacher ≠ student** (teacher {p.base.teacher}, student {p.base.student}). G and W are "
            "another model's CoTs, so C1 is a measurement: the closeness table gives the untrained "
            "student's loss on each set, and says whether another model's CoTs sit closer to it than H."
        )
    who = {"student": "the untrained student", "teacher": "the teacher"}.get(p.paraphrase.model, p.paraphrase.model)
    notes.append(
        f"- **Paraphraser.** P is H rewritten by {who} (`paraphrase.model: {p.paraphrase.model}`; the paper "
        "does not say which model paraphrases); a paraphrase that lost the answer"
        + ("" if p.paraphrase.allow_truncated else " or was cut at `paraphrase.max_new_tokens`")
        + " falls back to H. The "
        "training-data table gives P's closeness to the student next to H's and the share that fell back."
    )
    fmt = {"chat": "each student prompt is the student's chat template around the task's question",
           "plain": "each student prompt is the authors' plain-text template (`...Problem:\\n{problem}\\n\\nSolution:`), "
                    "decoded up to their stop strings"}[p.base.prompt_format]
    scoring = {"strict": "this project's verifiers (`evaluate.scoring: strict`)",
               "paper": "the authors' scorers (`evaluate.scoring: paper`: math-verify on the full text, Countdown's "
                        "last line, MBPP's sanitized code)"}[p.evaluate.scoring]
    budget = (f"{p.evaluate.max_new_tokens} new tokens" if p.evaluate.max_new_tokens != "auto" else
              "the task's new tokens in the authors' eval scripts (2,048 MATH and GSM8K, 4,096 Countdown, 1,024 MBPP)")
    notes.append(
        f"- **Prompts and scoring.** `base.prompt_format: {p.base.prompt_format}`: {fmt} (SFT, closeness and "
        f"evaluation alike). Answers are scored with {scoring}, at most {budget} "
        f"(`evaluate.max_new_tokens: {p.evaluate.max_new_tokens}`)."
    )
    return notes


def run_provenance(p, metrics_dir) -> dict:
    """metrics/provenance.json: the provenance blocks of this run's evaluation files (the sets its
    params train, the untrained student, the checkpoints) merged (a field they disagree on is
    listed under ``mixed``), with every generating and training stage's batch size."""
    from pathlib import Path

    from cotshape.core.artifacts import mix_set_name
    from cotshape.core.provenance import merge
    from cotshape.core.records import read_json

    # the evaluation files of this run's params only: a metrics folder may still hold files of sets
    # an earlier params trained (a git checkout keeps them), which are no provenance of these numbers
    sets = ["base", *trained_sets(p), *(mix_set_name(f) for f in p.degrade.flawed_fractions)]
    names = [f"eval/{t}-{s}.json" for t in p.base.tasks for s in sets]
    names += [f"eval/checkpoints/{t}-{s}-step-{n}.json"  # evaluate_ckpt: H, G, W, P at sft.save_steps
              for t in p.base.tasks for s in BASE_SETS for n in p.sft.save_steps]
    blocks = {}
    for name in names:
        f = Path(metrics_dir) / name
        if not f.exists():
            continue
        doc = read_json(f)
        if isinstance(doc, dict) and isinstance(doc.get("provenance"), dict):
            blocks[f.relative_to(Path(metrics_dir)).as_posix()] = doc["provenance"]
    out = merge(blocks)
    out["batch_size"] = {**(out.get("batch_size") or {}), "sample": p.sample.batch_size,
                         "paraphrase": p.sample.batch_size, "sft": p.sft.batch_size,
                         "closeness": p.closeness.batch_size}
    out["evaluation_files"] = len(blocks)
    return out


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
    ap.add_argument("--provenance-out", help="metrics/provenance.json: what produced the numbers (cotshape compare reads it)")
    args = ap.parse_args(argv)
    p = params()
    from cotshape.evaluation.claims import judge_run
    from cotshape.reporting.report import build_report
    from cotshape.tracking.stage_run import begin_stage

    sets = trained_sets(p)
    run = begin_stage("report", p, sections=dvc_params("report"),
                      inputs=[args.metrics_dir, f"{args.plots_dir}/loss", args.eval_dir, args.sets_dir],
                      outputs=[x for x in (args.out_dir, args.claims_out, args.summary_out, args.provenance_out) if x])

    claims, summary, comparisons = judge_run(
        p.base.tasks, sets, p.degrade.flawed_fractions, p.degrade.base_set, args.eval_dir, args.metrics_dir,
        args.sets_dir, margin=p.report.margin, seed=p.base.seed_of("eval"), n_boot=p.report.n_boot)
    write_json(args.claims_out, claims)
    write_json(args.summary_out, summary)
    if args.provenance_out:
        write_json(args.provenance_out, run_provenance(p, args.metrics_dir))
    path = build_report(args.metrics_dir, args.plots_dir, args.out_dir, tasks=p.base.tasks, sets=sets,
                        fractions=p.degrade.flawed_fractions, base_set=p.degrade.base_set,
                        context={"teacher": p.base.teacher, "student": p.base.student},
                        claims=claims, comparisons=comparisons, notes=run_notes(p),
                        checkpoints=p.sft.save_steps)
    for c in claims["claims"]:
        print(f"{c['task']} {c['id']}: {c['verdict']}")
    print(f"report written to {path}")
    run.log_metrics(summary)
    run.set_tags({f"claim.{c['task']}.{c['id']}": c["verdict"] for c in claims["claims"]})
    run.log_artifact(args.claims_out)
    run.log_artifact(path)


if __name__ == "__main__":
    raise SystemExit(main())
