"""report: reports/summary.md and PNG plots from every metrics file of the pipeline."""

from __future__ import annotations

import argparse

from cotshape.pipeline import params, stage_main

SETS = ["H", "G", "W", "P", "step"]


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--metrics-dir", required=True)
    ap.add_argument("--plots-dir", required=True)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.report import build_report
    path = build_report(args.metrics_dir, args.plots_dir, args.out_dir, tasks=p.base.tasks, sets=SETS,
                        fractions=p.degrade.flawed_fractions,
                        context={"teacher": p.base.teacher, "student": p.base.student})
    print(f"report written to {path}")


if __name__ == "__main__":
    raise SystemExit(main())
