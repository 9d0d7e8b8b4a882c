"""The experiment report: the tables and plots a researcher came for, built from the metrics
the stages wrote.

:func:`build_report` reads this layout under ``metrics_dir`` (``metrics/stages`` in dvc.yaml);
every file is optional: a missing one shows as "—" in the tables and as a gap in the plots, so a
partly-run pipeline still gets a report::

    eval/{task}-{set}.json          score() of cotshape.evaluation.evaluate; set in H, G, W, P, step-K,
                                    mix-{p} (p as a Python float: mix-0.0 ... mix-1.0), base
    sft/{task}-{set}.json           train_loss, first_loss, final_loss, steps, train_tokens,
                                    tokens_per_second, examples
    closeness/{task}.json           {set: {mean_loss, perplexity, n_tokens, n_examples}}
    select/{task}.json              problems, with_correct, with_wrong, with_both,
                                    selected_G, selected_W
    paraphrase/{task}.json          success_rate, ...
    verify/{task}.json              the teacher's accuracy on its own samples
    degrade/{task}.json             size, fewer_steps_than_k (step-K sets: CoTs with < K steps)
    plots/loss/{task}-{set}.csv     step,loss (under ``plots_dir``)

and writes, each file atomically: ``summary.md`` (tables and a how-to-read note, with the plots
embedded), ``accuracy.png``, ``mixture_curve.png``, ``loss_curves.png``, ``closeness.png`` in
``out_dir``, and the long-format tables of dvc.yaml's top-level plots in ``plots/summary/``
(:func:`~cotshape.reporting.plot_tables.summary_csvs`). A file that exists but is malformed is an
error naming it (a :class:`~cotshape.core.records.RecordError`): a silently wrong report is worse
than none.

The parts: :mod:`~cotshape.reporting.report_data` reads the files, :mod:`~cotshape.reporting.sections`
writes one Markdown section per function, :mod:`~cotshape.reporting.plots` draws the PNGs and
:mod:`~cotshape.reporting.plot_tables` writes the CSVs; :func:`build_report` puts them together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotshape.core.config import set_name
from cotshape.core.records import write_text
from cotshape.reporting.plot_tables import summary_csvs
from cotshape.reporting.plots import plot_accuracy, plot_closeness, plot_losses, plot_mixture
from cotshape.reporting.report_data import BASE_SET, Metrics
from cotshape.reporting.sections import (
    HOW_TO_READ,
    accuracy_section,
    checkpoint_section,
    closeness_section,
    contamination_section,
    data_section,
    intro_section,
    mixture_section,
    steps_section,
    training_section,
)


def build_report(
    metrics_dir: str | os.PathLike,
    plots_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    tasks: Sequence[str],
    sets: Sequence[str],
    fractions: Sequence[float],
    context: dict[str, Any] | None = None,
    base_set: str = "H",
    claims: dict[str, Any] | None = None,
    comparisons: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    checkpoints: Sequence[int] = (),
) -> Path:
    """Write the report (see the module docstring) and return the path of ``summary.md``.

    ``sets`` are the non-mixture training sets (e.g. ``["H", "G", "W", "P", "step"]``); the
    mixture sets ``mix-{p}`` come from ``fractions`` and the base student is always included.
    ``context`` (e.g. ``{"teacher": ..., "student": ...}``) is listed in the intro, ``notes``
    (what the run is and is not) right after it. ``claims`` (:func:`cotshape.evaluation.claims.judge_run`)
    opens the report; ``comparisons`` adds the paired differences to the accuracy tables.
    ``checkpoints`` (``sft.save_steps``) adds a table of the intermediate checkpoints' accuracy
    (``eval/checkpoints/{task}-{set}-step-{n}.json``).
    """
    if not tasks:
        raise ValueError("tasks is empty: nothing to report")
    for p in fractions:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"flawed fraction {p!r} is outside [0, 1]")
    metrics_dir, plots_dir, out_dir = Path(metrics_dir), Path(plots_dir), Path(out_dir)
    sets = [s for s in sets if s != BASE_SET]
    # the mixture curve starts at 0 % flawed: the base set itself (trained once)
    curve = [(0.0, base_set)] + [(float(p), set_name(p)) for p in sorted(fractions) if float(p) > 0]
    mixes = [name for p, name in curve if p > 0 and name not in sets]
    trained = [*sets, *mixes]
    m = Metrics(metrics_dir, plots_dir, tasks, [BASE_SET, *trained])

    sections = [
        intro_section(m, tasks, trained, context, notes, claims, comparisons),
        accuracy_section(m, tasks, trained, comparisons),
        checkpoint_section(m, tasks, sets, checkpoints),
        mixture_section(m, tasks, curve),
        closeness_section(m, tasks, trained),
        training_section(m, tasks, trained),
        data_section(m, tasks),
        contamination_section(m, tasks),
        steps_section(tasks, comparisons),
        HOW_TO_READ,
    ]
    text = "\n".join(x for x in sections if x)  # a section with nothing to show is left out

    # plots and CSVs first, summary last: a summary on disk means the whole report was written
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_accuracy(m, tasks, sets, out_dir / "accuracy.png")
    plot_mixture(m, tasks, curve, out_dir / "mixture_curve.png")
    plot_losses(m, tasks, trained, out_dir / "loss_curves.png")
    plot_closeness(m, tasks, trained, out_dir / "closeness.png")
    for name, text_ in summary_csvs(m, tasks, trained, curve).items():
        write_text(plots_dir / "summary" / name, text_)
    summary = out_dir / "summary.md"
    write_text(summary, text)
    return summary
