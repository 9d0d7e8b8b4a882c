"""MLflow tracking for the sft and evaluate stages: one experiment per pipeline, one run per stage.

    tracker = Tracker("cotshape", params_tracking_uri)       # MLFLOW_TRACKING_URI wins
    with tracker.run("sft@gsm8k-G", tags=run_tags(task="gsm8k", set="G", student=..., teacher=...),
                     params={...}) as run:
        train_sft(..., tracker=run)                          # step-wise loss via run.callback()
        run.log_metrics({"accuracy": 0.42})
        run.log_artifact("metrics/sft/gsm8k-G.json")

Tracking never breaks a stage: if the store is unreachable (a dead server, a bad URI) or fails
mid-run, the tracker warns once per URI ("MLflow at URI unreachable: ...") and becomes a no-op;
the stage's own metrics files are the record, and what was logged stays in ``run.history`` (and in
``fallback_dir`` when given). HTTP requests get short timeouts and few retries so a dead server
costs seconds, not minutes. The default store is ``sqlite:///mlflow.db`` (the plain ``./mlruns``
file store needs an opt-in in mlflow 3).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"
_WARNED: set[str] = set()  # URIs already warned about in this process


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD``, or ``unknown`` outside a repository (or without git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def run_tags(task: str | None = None, set: str | None = None, student: str | None = None,
             teacher: str | None = None, **extra: Any) -> dict[str, str]:
    """The tags of a stage run: task, set, student, teacher, the git commit and the DVC revision
    (the experiment's baseline commit under ``dvc exp run``, else the git commit)."""
    commit = git_commit()
    tags = {"task": task, "set": set, "student": student, "teacher": teacher, "git_commit": commit,
            "dvc_rev": os.environ.get("DVC_EXP_BASELINE_REV") or commit,
            "mlflow.source.git.commit": commit}
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
    tags.update(extra)
    return {k: str(v) for k, v in tags.items() if v is not None}


class TrackedRun:
    """An active run. Every method is safe to call when tracking is off or broken."""

    def __init__(self, tracker: Tracker, run_id: str | None, name: str) -> None:
        self._tracker = tracker
        self.run_id = run_id
        self.name = name
        #: everything logged to this run, kept locally whatever happens to the server
        self.history: dict[str, Any] = {"name": name, "params": {}, "tags": {}, "metrics": [], "artifacts": []}

    @property
    def active(self) -> bool:
        return self.run_id is not None and self._tracker.enabled

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        self.history["params"].update(flat)
        # MLflow caps a param value at 6000 characters
        self._call(lambda c: c.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in flat.items()]))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log the finite numeric entries of ``metrics`` (others are skipped: MLflow takes floats)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        clean = {_key(k): float(v) for k, v in metrics.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        self.history["metrics"].append({"step": step, **clean})
        batch = [Metric(k, v, now, step or 0) for k, v in clean.items()]
        self._call(lambda c: c.log_batch(self.run_id, metrics=batch))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.history["artifacts"].append(str(path))
        self._call(lambda c: c.log_artifact(self.run_id, str(path), artifact_path))

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.history["tags"].update({k: str(v) for k, v in tags.items()})
        self._call(lambda c: [c.set_tag(self.run_id, k, str(v)) for k, v in tags.items()])

    def callback(self):
        """A ``transformers.TrainerCallback`` sending each training log (loss, learning rate,
        grad norm, ...) to this run at its optimizer step."""
        return _loss_callback(self)

    def _call(self, fn) -> None:
        if not self.active:
            return
        try:
            fn(self._tracker.client)
        except Exception as e:  # tracking must never fail the stage
            self._tracker._disable(e)


class Tracker:
    """MLflow experiment handle. ``tracking_uri``: the param; ``MLFLOW_TRACKING_URI`` overrides it;
    default ``sqlite:///mlflow.db``. ``fallback_dir``: where a run's logged values are written
    (``<run name>.json``) when the store is unreachable."""

    def __init__(self, experiment: str = "cotshape", tracking_uri: str | None = None,
                 fallback_dir: str | os.PathLike | None = None) -> None:
        self.experiment = experiment
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri or DEFAULT_URI
        self.fallback_dir = Path(fallback_dir) if fallback_dir else None
        self.enabled = True
        self._client = None
        self._experiment_id: str | None = None
        if self.uri.startswith(("http://", "https://")):
            # mlflow's defaults (7 retries with backoff, 120 s timeout) hang a stage for minutes
            # on a dead server
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def _connect(self) -> str | None:
        """The experiment id (created if missing), or None when the store cannot be reached."""
        if not self.enabled:
            return None
        if self._experiment_id is None:
            try:
                exp = self.client.get_experiment_by_name(self.experiment)
                self._experiment_id = exp.experiment_id if exp else self.client.create_experiment(self.experiment)
            except Exception as e:
                self._disable(e)
                return None
        return self._experiment_id

    def _disable(self, error: BaseException) -> None:
        self.enabled = False
        if self.uri not in _WARNED:
            _WARNED.add(self.uri)
            where = f"{self.fallback_dir}/<run>.json and the stage's metrics files" if self.fallback_dir \
                else "the stage's metrics files"
            reason = " ".join(str(error).split())[:300]
            warnings.warn(f"MLflow at {self.uri} unreachable: {type(error).__name__}: {reason}; "
                          f"metrics kept locally in {where}", RuntimeWarning, stacklevel=3)

    @contextmanager
    def run(self, name: str, tags: dict[str, Any] | None = None,
            params: dict[str, Any] | None = None) -> Iterator[TrackedRun]:
        """Start a run (ended FINISHED, or FAILED if the block raises) and yield it. The git
        commit and DVC revision tags are added when ``tags`` lacks them (see :func:`run_tags`)."""
        tags = {**run_tags(), **{k: str(v) for k, v in (tags or {}).items() if v is not None}}
        run_id = None
        exp_id = self._connect()
        if exp_id is not None:
            try:
                run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            except Exception as e:
                self._disable(e)
        run = TrackedRun(self, run_id, name)
        run.history["tags"].update(tags)
        if params:
            run.log_params(params)
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        finally:
            run._call(lambda c: c.set_terminated(run.run_id, status=status))
            if not self.enabled and self.fallback_dir is not None:
                self.fallback_dir.mkdir(parents=True, exist_ok=True)
                safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)
                (self.fallback_dir / f"{safe}.json").write_text(json.dumps(run.history, indent=2) + "\n")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _key(k: str) -> str:
    # MLflow metric names: alphanumerics, _ - . space / only
    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(k))


def _loss_callback(run: TrackedRun):
    from transformers import TrainerCallback

    class MLflowLossCallback(TrainerCallback):
        """Sends the trainer's step-wise logs (``loss`` ...) to a :class:`TrackedRun`."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and state.is_world_process_zero:
                run.log_metrics(logs, step=state.global_step)

    return MLflowLossCallback()
