"""The long-format CSV tables behind dvc.yaml's top-level plots (``plots/summary/``): one row per
task and set, so that ``dvc plots`` overlays every set of a task whatever the tasks and fractions."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from cotshape.reporting.formatting import number
from cotshape.reporting.report_data import BASE_SET, Metrics


def _csv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def _r(x: float | None, digits: int = 4) -> Any:
    return "" if x is None else round(x, digits)


def summary_csvs(m: Metrics, tasks: Sequence[str], trained: Sequence[str],
                 curve: Sequence[tuple[float, str]]) -> dict[str, str]:
    """The long-format tables behind dvc.yaml's top-level plots (``plots/summary/``), one row per
    task and set, so a plot overlays every set of a task whatever the tasks and fractions:

    * ``loss.csv``: task, set, run, step, loss (every SFT loss curve of every training run);
    * ``accuracy.csv``: task, set, accuracy (%, mean over the runs), lo, hi (95 %, runs as the unit), label; a set without a
      result gets an empty accuracy and the label ``n/a`` (drawn as text, not as a 0 bar);
    * ``closeness.csv``: task, set, loss (the untrained student's loss per token), lo, hi, label;
    * ``mixture.csv``: task, fraction, accuracy, lo, hi (the 0 point is the base set).
    """
    loss_rows, acc_rows, close_rows, mix_rows = [], [], [], []
    for t in tasks:
        for s in trained:
            for r, curve_ in enumerate(m.loss.get((t, s)) or []):
                for step, loss in curve_:
                    loss_rows.append([t, s, r, int(step) if float(step).is_integer() else step, _r(loss)])
        for s in [BASE_SET, *trained]:
            res = m.eval_interval(t, s)
            if res is None:
                acc_rows.append([t, s, "", 0, 0, "n/a"])
            else:
                acc, lo, hi = res
                acc_rows.append([t, s, _r(100 * acc, 2), _r(100 * lo, 2), _r(100 * hi, 2), f"{100 * acc:.1f}"])
        close = m.closeness[t] or {}
        for s in [*trained, *(x for x in close if x not in trained)]:
            c = close.get(s)
            v = number(c.get("mean_loss")) if isinstance(c, dict) else None
            if v is None:
                if s in ("H", "G", "W", "P"):
                    close_rows.append([t, s, "", 0, 0, "n/a"])
                continue
            lo, hi = c.get("ci95") or (v, v)
            close_rows.append([t, s, _r(v), _r(lo), _r(hi), f"{v:.3f}"])
        for p, name in curve:
            res = m.eval_interval(t, name)
            if res is not None:
                acc, lo, hi = res
                mix_rows.append([t, float(p), _r(acc), _r(lo), _r(hi)])
    return {
        "loss.csv": _csv(["task", "set", "run", "step", "loss"], loss_rows),
        "accuracy.csv": _csv(["task", "set", "accuracy", "lo", "hi", "label"], acc_rows),
        "closeness.csv": _csv(["task", "set", "loss", "lo", "hi", "label"], close_rows),
        "mixture.csv": _csv(["task", "fraction", "accuracy", "lo", "hi"], mix_rows),
    }
