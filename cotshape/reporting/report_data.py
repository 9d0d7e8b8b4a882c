"""Reading the metrics files the report is built from (the layout is in :mod:`cotshape.reporting.report`):
every file optional (None when the stage has not run), a malformed one a
:class:`~cotshape.core.records.RecordError` naming it."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotshape.core.records import RecordError, read_json
from cotshape.reporting.formatting import number

#: the untrained student's row in every table (``eval/{task}-base.json``)
BASE_SET = "base"


def read_optional(path: Path) -> dict[str, Any] | None:
    """A metrics JSON object, or None when the file does not exist (the stage has not run)."""
    if not path.exists():
        return None
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise RecordError(f"{path}: expected a JSON object, got {type(obj).__name__}")
    return obj


def skipped(m: dict[str, Any] | None) -> bool:
    """Whether a metrics object says its stage ran with nothing to do (``{"skipped": 1}``)."""
    return bool(m and m.get("skipped"))


def read_loss_csv(path: str | os.PathLike) -> list[list[tuple[float, float]]] | None:
    """The loss curve of every training run of a set, ``[[(step, loss), ...] per run]``, from a loss
    log with the header ``run,step,loss`` (or ``step,loss``: one run); None when it is missing."""
    path = Path(path)
    if not path.exists():
        return None
    runs: dict[int, list[tuple[float, float]]] = {}
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, None) or []]
        if header not in (["run", "step", "loss"], ["step", "loss"]):
            raise RecordError(f"{path}:1: expected the header 'run,step,loss', got {','.join(header)!r}")
        with_run = header[0] == "run"
        for lineno, row in enumerate(reader, 2):
            if not row or not "".join(row).strip():
                continue
            try:
                run = int(row[0]) if with_run else 0
                runs.setdefault(run, []).append((float(row[-2]), float(row[-1])))
                if len(row) != len(header):
                    raise ValueError
            except (ValueError, IndexError):
                raise RecordError(f"{path}:{lineno}: expected {','.join(header)!r} numbers, got {','.join(row)!r}") from None
    return [runs[r] for r in sorted(runs)]


class Metrics:
    """Every metrics file of the report, read once (the intermediate checkpoints' evaluations
    when they are asked for: :meth:`checkpoint_eval`)."""

    def __init__(self, metrics_dir: Path, plots_dir: Path, tasks: Sequence[str], eval_sets: Sequence[str]):
        self.metrics_dir = metrics_dir
        self.eval = {
            (t, s): read_optional(metrics_dir / "eval" / f"{t}-{s}.json") for t in tasks for s in eval_sets
        }
        trained = [s for s in eval_sets if s != BASE_SET]
        self.sft = {(t, s): read_optional(metrics_dir / "sft" / f"{t}-{s}.json") for t in tasks for s in trained}
        self.loss = {(t, s): read_loss_csv(plots_dir / "loss" / f"{t}-{s}.csv") for t in tasks for s in trained}
        self.closeness = {t: read_optional(metrics_dir / "closeness" / f"{t}.json") for t in tasks}
        self.select = {t: read_optional(metrics_dir / "select" / f"{t}.json") for t in tasks}
        self.paraphrase = {t: read_optional(metrics_dir / "paraphrase" / f"{t}.json") for t in tasks}
        self.verify = {t: read_optional(metrics_dir / "verify" / f"{t}.json") for t in tasks}
        self.degrade = {t: read_optional(metrics_dir / "degrade" / f"{t}.json") for t in tasks}
        self.decontaminate = {t: read_optional(metrics_dir / "decontaminate" / f"{t}.json") for t in tasks}

    def checkpoint_eval(self, task: str, set_: str, step: int) -> dict[str, Any] | None:
        """The evaluation of the checkpoint saved after ``step`` optimizer steps
        (``eval/checkpoints/{task}-{set}-step-{step}.json``; ``sft.save_steps``), read on demand."""
        return read_optional(self.metrics_dir / "eval" / "checkpoints" / f"{task}-{set_}-step-{step}.json")

    def eval_skipped(self, task: str, set_: str) -> bool:
        return skipped(self.eval.get((task, set_)))

    def eval_value(self, task: str, set_: str, key: str) -> Any:
        """A value of an eval metrics file; None when the file is missing or was skipped."""
        m = self.eval.get((task, set_))
        return None if m is None or skipped(m) else m.get(key)

    def eval_interval(self, task: str, set_: str) -> tuple[float, float, float] | None:
        """``(accuracy, lo, hi)``: the accuracy and its 95 % interval (the accuracy itself for a
        file without ``ci95``); None when there is no result."""
        acc = number(self.eval_value(task, set_, "accuracy"))
        if acc is None:
            return None
        ci = self.eval_value(task, set_, "ci95")
        lo, hi = ci if isinstance(ci, list) and len(ci) == 2 else (acc, acc)
        return acc, lo, hi
