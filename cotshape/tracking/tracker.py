"""The MLflow tracker: one experiment per pipeline, one run per stage, and the run's logging calls.

    tracker = Tracker("cotshape", params_tracking_uri)       # MLFLOW_TRACKING_URI wins
    with tracker.run("sft@gsm8k-G", tags=run_tags(task="gsm8k", set="G", student=..., teacher=...),
                     params={...}) as run:
        train_sft(..., tracker=run)                          # step-wise loss via run.callback()
        run.log_metrics({"accuracy": 0.42})
        run.log_artifact("metrics/sft/gsm8k-G.json")

Tracking never breaks a stage: if the store is unreachable (a dead server, a bad URI) or fails
mid-run, the tracker warns once per URI ("MLflow at URI unreachable: ...") and becomes a no-op;
the stage's own metrics files are the record, and what was logged stays in ``run.history`` (and in
``fallback_dir`` when given). An unreachable store of any scheme costs at most ``CONNECT_TIMEOUT`` seconds per stage
(:mod:`cotshape.tracking.connection`): local stores
(``sqlite:``, ``file:``, a path) are checked before MLflow opens them (MLflow's own SQL engine retries
an unopenable database for about 100 s), network stores get a TCP probe and the first request runs
under a deadline; HTTP requests get short timeouts and few retries. The default store is
``sqlite:///mlflow.db`` (the plain ``./mlruns`` file store needs an opt-in in mlflow 3).

A stage killed hard (``kill -9``, the machine lost) cannot end its run; every run is tagged with the
host and pid of its process, and the next run started on that host ends such leftovers as KILLED
(``cotshape.killed_by`` names the run that noticed).

One run per pipeline stage: :mod:`cotshape.tracking.stage_run`; input/output hashes:
:mod:`cotshape.tracking.hashes`; the SFT folder's run file: :mod:`cotshape.tracking.run_file`.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cotshape.core.provenance import git_head
from cotshape.tracking.connection import (
    CONNECT_TIMEOUT,
    bound_http_retries,
    call_within,
    is_local_store,
    pid_alive,
    unreachable_reason,
)
from cotshape.tracking.hashes import path_hash

DEFAULT_URI = "sqlite:///mlflow.db"
GENERATIONS_N = 20  # rows per set in a run's generations table
COMPLETION_CHARS = 2000  # a completion is cut here in that table
_WARNED: set[str] = set()  # URIs already warned about in this process


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD``, or ``unknown`` outside a repository (or without git)."""
    return git_head(cwd) or "unknown"


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
        #: the :class:`Tracker` this run belongs to
        self.tracker = tracker
        self.run_id = run_id
        self.name = name
        #: everything logged to this run, kept locally whatever happens to the server
        self.history: dict[str, Any] = {"name": name, "params": {}, "tags": {}, "metrics": [], "artifacts": []}
        #: rows of the generations table (:meth:`log_generations`), written when the run ends
        self.generations: list[dict[str, Any]] = []

    @property
    def active(self) -> bool:
        return self.run_id is not None and self.tracker.enabled

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = flatten_params(params)
        self.history["params"].update(flat)
        # MLflow caps a param value at 6000 characters, a key at 250, a batch at 100 params
        batch = [Param(_key(k)[:250], str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(batch), 100):
            self._call(lambda c, b=batch[i:i + 100]: c.log_batch(self.run_id, params=b))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log the finite numeric entries of ``metrics`` (others are skipped: MLflow takes floats)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        clean = {_key(k)[:250]: float(v) for k, v in flatten_params(metrics).items()  # nested: "a.b"
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        self.history["metrics"].append({"step": step, **clean})
        batch = [Metric(k, v, now, step or 0) for k, v in clean.items()]
        for i in range(0, len(batch), 1000):  # MLflow's batch limit
            self._call(lambda c, b=batch[i:i + 1000]: c.log_batch(self.run_id, metrics=b))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.history["artifacts"].append(str(path))
        self._call(lambda c: c.log_artifact(self.run_id, str(path), artifact_path))

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        clean = {_key(k)[:250]: str(v)[:8000] for k, v in tags.items() if v is not None}
        self.history["tags"].update(clean)
        batch = [RunTag(k, v) for k, v in clean.items()]
        for i in range(0, len(batch), 100):  # one request per 100 tags, not one per tag
            self._call(lambda c, b=batch[i:i + 100]: c.log_batch(self.run_id, tags=b))

    def log_dataset(self, path: str | os.PathLike, context: str = "input", name: str | None = None,
                    digest: str | None = None) -> None:
        """Log the file ``path`` as an MLflow dataset input of this run (a meta dataset: name,
        digest = its DVC-style md5, source = the local path, profile = row count and columns of a
        JSONL file; the file itself is not uploaded). ``context``: training, evaluation, input..."""
        if not self.active:
            return
        try:
            entity = _dataset_entity(Path(path), name or str(path), digest)
        except OSError:
            return
        self.history.setdefault("datasets", []).append({"name": entity.name, "digest": entity.digest,
                                                        "context": context})
        from mlflow.entities import DatasetInput, InputTag

        self._call(lambda c: c.log_inputs(self.run_id, datasets=[
            DatasetInput(entity, tags=[InputTag("mlflow.data.context", context)])]))

    def log_generations(self, records: list[dict[str, Any]], set: str | None = None,
                        n: int | None = None) -> None:
        """Keep the first ``n`` (default :data:`GENERATIONS_N`) of ``records`` (sample, paraphrase,
        training or evaluation records) as rows of the run's ``generations.json`` table artifact:
        set, prompt id, completion (cut at :data:`COMPLETION_CHARS`), and correct/extracted/
        finish_reason where the records have them. Written once, when the run ends."""
        for r in records[: GENERATIONS_N if n is None else n]:
            text = str(r.get("completion", ""))
            row = {"set": set or r.get("set") or "", "prompt_id": str(r.get("id") or r.get("problem_id") or ""),
                   "problem_id": str(r.get("problem_id", "")),
                   "completion": text[:COMPLETION_CHARS] + ("..." if len(text) > COMPLETION_CHARS else "")}
            for k in ("sample_index", "correct", "parsed", "extracted", "finish_reason"):
                row[k] = None if r.get(k) is None else str(r[k]) if k == "extracted" else r[k]
            self.generations.append(row)

    def _flush_generations(self) -> None:
        if not self.generations:
            return
        self.history["generations"] = len(self.generations)
        columns = {k: [row.get(k) for row in self.generations] for k in self.generations[0]}

        def log(c):
            with warnings.catch_warnings():  # pandas' dtype deprecation notes from inside log_table
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                c.log_table(self.run_id, data=columns, artifact_file="generations.json")

        self._call(log)

    def callback(self):
        """A ``transformers.TrainerCallback`` sending each training log (loss, learning rate,
        grad norm, ...) to this run at its optimizer step."""
        return _loss_callback(self)

    def _call(self, fn) -> None:
        if not self.active:
            return
        try:
            fn(self.tracker.client)
        except Exception as e:  # tracking must never fail the stage
            self.tracker._disable(e)


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
        bound_http_retries(self.uri)

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    def connect(self) -> str | None:
        """The experiment id (created if missing), or None when the store cannot be reached."""
        if not self.enabled:
            return None
        if self._experiment_id is None:
            reason = unreachable_reason(self.uri)
            if reason is not None:
                self._disable(ConnectionError(reason))
                return None

            def connect():
                exp = self.client.get_experiment_by_name(self.experiment)
                return exp.experiment_id if exp else self.client.create_experiment(self.experiment)

            try:
                if is_local_store(self.uri):
                    # local and checked above: the first open may create the schema (seconds)
                    self._experiment_id = connect()
                else:
                    self._experiment_id = call_within(CONNECT_TIMEOUT, connect)
            except Exception as e:
                self._disable(e)
                return None
        return self._experiment_id

    def end_stale_runs(self, killed_by: str | None = None) -> list[str]:
        """End as KILLED the RUNNING runs of this experiment whose process (tagged
        ``cotshape.host`` / ``cotshape.pid``) ran on this host and no longer exists. Returns
        their run ids. Runs of other hosts, and runs without these tags, are left alone."""
        exp_id = self.connect()
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
                if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
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
        tags = {**run_tags(), **{_key(k)[:250]: str(v)[:8000] for k, v in (tags or {}).items() if v is not None},
                "cotshape.host": socket.gethostname(), "cotshape.pid": str(os.getpid())}
        run_id = None
        exp_id = self.connect()
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
            run._flush_generations()
            run._call(lambda c: c.set_terminated(run.run_id, status=status))
            if not self.enabled and self.fallback_dir is not None:
                self.fallback_dir.mkdir(parents=True, exist_ok=True)
                safe = re.sub(r"[^A-Za-z0-9_.@-]+", "_", name)
                (self.fallback_dir / f"{safe}.json").write_text(json.dumps(run.history, indent=2) + "\n")



def flatten_params(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as dotted keys under ``prefix``: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an
    empty dict leaves no key)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_params(v, key + "."))
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



def _dataset_entity(path: Path, name: str, digest: str | None):
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import Dataset

    if digest is None:
        h = path_hash(path)
        if h is None:
            raise FileNotFoundError(path)
        digest = h[1]
    profile: dict[str, Any] = {}
    if path.is_file() and path.suffix == ".jsonl":
        rows, columns = 0, None
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    rows += 1
                    if columns is None:
                        try:
                            columns = list(json.loads(line))
                        except (ValueError, TypeError):
                            columns = []
        profile = {"num_rows": rows, "columns": columns or []}
    meta = MetaDataset(LocalArtifactDatasetSource(str(path.resolve())), name=name, digest=digest[:36])
    e = meta._to_mlflow_entity()
    return Dataset(name=e.name, digest=e.digest, source_type=e.source_type, source=e.source,
                   schema=e.schema, profile=json.dumps(profile) if profile else None)

