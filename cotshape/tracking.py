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
``fallback_dir`` when given). An unreachable store of any scheme costs at most ``CONNECT_TIMEOUT`` seconds per stage: local stores
(``sqlite:``, ``file:``, a path) are checked before MLflow opens them (MLflow's own SQL engine retries
an unopenable database for about 100 s), network stores get a TCP probe and the first request runs
under a deadline; HTTP requests get short timeouts and few retries. The default store is
``sqlite:///mlflow.db`` (the plain ``./mlruns`` file store needs an opt-in in mlflow 3).

A stage killed hard (``kill -9``, the machine lost) cannot end its run; every run is tagged with the
host and pid of its process, and the next run started on that host ends such leftovers as KILLED
(``cotshape.killed_by`` names the run that noticed).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_URI = "sqlite:///mlflow.db"
CONNECT_TIMEOUT = 5.0  # seconds an unreachable store may cost a stage
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


def _preflight(uri: str, timeout: float = 2.0) -> str | None:
    """Why the store at ``uri`` cannot be reached, found without MLflow (None: worth trying).

    Local stores: the database file or store folder must be creatable/writable. Network stores: a
    TCP connection to host:port within ``timeout`` seconds."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    scheme = parts.scheme.split("+")[0].lower()
    if scheme == "sqlite":
        path = uri.split(":///", 1)[1] if ":///" in uri else ""
        if not path or path == ":memory:":
            return None
        db = Path(path)
        if db.exists():
            return None if os.access(db, os.R_OK | os.W_OK) else f"database file {db} is not readable and writable"
        parent = db.parent
        if not parent.is_dir():
            return f"folder {parent} of the database does not exist"
        return None if os.access(parent, os.W_OK) else f"folder {parent} of the database is not writable"
    if scheme in ("", "file") or len(scheme) == 1:  # a path (a drive letter on Windows)
        folder = Path(parts.path if scheme == "file" else uri)
        probe = folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK):
            return f"store folder {folder} cannot be created or written"
        return None
    if parts.hostname and scheme not in ("databricks", "uc"):
        default_port = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}.get(scheme)
        try:
            port = parts.port or default_port
        except ValueError:
            return f"bad port in {uri}"
        if port is None:
            return None
        try:
            with socket.create_connection((parts.hostname, port), timeout=timeout):
                return None
        except OSError as e:
            return f"no connection to {parts.hostname}:{port} ({e})"
    return None


def _within(seconds: float, fn):
    """``fn()`` in a daemon thread; its result, its exception re-raised, or TimeoutError."""
    box: dict[str, Any] = {}

    def work():
        try:
            box["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            box["error"] = e

    t = threading.Thread(target=work, daemon=True, name="mlflow-connect")
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise TimeoutError(f"no answer within {seconds:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


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
            reason = _preflight(self.uri)
            if reason is not None:
                self._disable(ConnectionError(reason))
                return None

            def connect():
                exp = self.client.get_experiment_by_name(self.experiment)
                return exp.experiment_id if exp else self.client.create_experiment(self.experiment)

            try:
                if self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri:
                    # local and checked above: the first open may create the schema (seconds)
                    self._experiment_id = connect()
                else:
                    self._experiment_id = _within(CONNECT_TIMEOUT, connect)
            except Exception as e:
                self._disable(e)
                return None
        return self._experiment_id

    def end_stale_runs(self, killed_by: str | None = None) -> list[str]:
        """End as KILLED the RUNNING runs of this experiment whose process (tagged
        ``cotshape.host`` / ``cotshape.pid``) ran on this host and no longer exists. Returns
        their run ids. Runs of other hosts, and runs without these tags, are left alone."""
        exp_id = self._connect()
        if exp_id is None:
            return []
        host = socket.gethostname()
        ended: list[str] = []
        try:
            runs = self.client.search_runs(
                [exp_id], filter_string=f"attributes.status = 'RUNNING' and tags.`cotshape.host` = '{host}'",
                max_results=1000)
            for r in runs:
                pid = r.data.tags.get("cotshape.pid", "")
                if not pid.isdigit() or int(pid) == os.getpid() or _pid_alive(int(pid)):
                    continue
                if killed_by:
                    self.client.set_tag(r.info.run_id, "cotshape.killed_by", killed_by)
                self.client.set_terminated(r.info.run_id, status="KILLED")
                ended.append(r.info.run_id)
        except Exception as e:
            self._disable(e)
        return ended

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
        tags = {**run_tags(), **{k: str(v) for k, v in (tags or {}).items() if v is not None},
                "cotshape.host": socket.gethostname(), "cotshape.pid": str(os.getpid())}
        run_id = None
        exp_id = self._connect()
        if exp_id is not None:
            try:
                run_id = self.client.create_run(exp_id, run_name=name, tags=tags).info.run_id
            except Exception as e:
                self._disable(e)
        if run_id is not None:
            self.end_stale_runs(killed_by=run_id)
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
