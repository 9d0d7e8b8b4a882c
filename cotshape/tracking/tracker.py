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
GENERATIONS_N = 20  # rows per set in a run's generations table
COMPLETION_CHARS = 2000  # a completion is cut here in that table
# an input larger than this (md5 at ~300-600 MB/s: about 1 s) is hashed by its file listing
# (input.<path>.stat); by size, not by time, so the same folder gets the same kind of tag every run
HASH_MAX_BYTES = 256 << 20
from cotshape.core.artifacts import SFT_RUN_FILE  # noqa: E402
from cotshape.core.hashing import md5_file  # noqa: E402
from cotshape.core.records import write_text  # noqa: E402


def _is_run_file(name: str) -> bool:
    """The run file or a temp file of its atomic write (``.mlflow_run.json.*.tmp``)."""
    return name == SFT_RUN_FILE or (name.startswith(f".{SFT_RUN_FILE}.") and name.endswith(".tmp"))


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
        #: rows of the generations table (:meth:`log_generations`), written when the run ends
        self.generations: list[dict[str, Any]] = []

    @property
    def active(self) -> bool:
        return self.run_id is not None and self._tracker.enabled

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = _flatten(params)
        self.history["params"].update(flat)
        # MLflow caps a param value at 6000 characters, a key at 250, a batch at 100 params
        batch = [Param(_key(k)[:250], str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(batch), 100):
            self._call(lambda c, b=batch[i:i + 100]: c.log_batch(self.run_id, params=b))

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Log the finite numeric entries of ``metrics`` (others are skipped: MLflow takes floats)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        clean = {_key(k)[:250]: float(v) for k, v in _flatten(metrics).items()  # nested: "a.b"
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
        tags = {**run_tags(), **{_key(k)[:250]: str(v)[:8000] for k, v in (tags or {}).items() if v is not None},
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
            run._flush_generations()
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


# --- one run per stage -------------------------------------------------------------------------
#
#     run = begin_stage("verify", p, task=args.task, sections=(), inputs=[args.problems, args.samples],
#                       outputs=[args.out, args.metrics])
#     ...                                   # the stage's work; run.log_metrics / log_generations
#
# stage_main (cotshape/pipeline/stage.py) ends the run: FINISHED with its outputs' hashes, or FAILED.
# ``with stage_run(...) as run:`` is the same as a context manager.

_STAGE_RUNS: list[Any] = []  # stage_run context managers begun by begin_stage, ended by end_stage_runs


def path_hash(path: str | os.PathLike, max_bytes: int = HASH_MAX_BYTES) -> tuple[str, str] | None:
    """``("md5", hash)`` of a file or folder in DVC's style, or ``("stat", hash)`` when it holds
    more than ``max_bytes`` (model folders: a full md5 would take over a second); None when
    ``path`` does not exist.

    File: md5 of its bytes. Folder: md5 of the JSON list of ``{"md5", "relpath"}`` of its files
    (sorted by relative path) + ``.dir``, as DVC hashes a directory. The ``stat`` variant hashes
    the list of ``{"relpath", "size", "mtime_ns"}`` instead: cheap, and it changes whenever a file
    is rewritten, but it is not DVC's hash."""
    import hashlib

    p = Path(path)
    if not p.exists():
        return None
    # the run file is local MLflow state, not part of the result (.dvcignore leaves it out of DVC's hash too)
    files = [p] if p.is_file() else sorted((f for f in p.rglob("*") if f.is_file() and not _is_run_file(f.name)),
                                           key=lambda f: f.relative_to(p).as_posix())
    if sum(f.stat().st_size for f in files) <= max_bytes:
        if p.is_file():
            return "md5", md5_file(p)
        entries = [{"md5": md5_file(f), "relpath": f.relative_to(p).as_posix()} for f in files]
        return "md5", hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
    listing = [{"relpath": f.relative_to(p).as_posix() if f != p else p.name, "size": f.stat().st_size,
                "mtime_ns": f.stat().st_mtime_ns} for f in files]
    return "stat", hashlib.md5(json.dumps(listing, sort_keys=True).encode()).hexdigest()


def hash_tags(kind: str, paths: list[str | os.PathLike], cache: dict[str, tuple[str, str]] | None = None
              ) -> dict[str, str]:
    """``{"<kind>.<path>.md5" | "<kind>.<path>.stat": hash}`` for the existing ``paths``."""
    tags = {}
    for path in paths:
        h = path_hash(path)
        if h is None:
            continue
        if cache is not None:
            cache[str(path)] = h
        tags[f"{kind}.{Path(path).as_posix()}.{h[0]}"] = h[1]
    return tags


def stage_params(p: Any, sections: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The params.yaml values a stage depends on, flattened: ``("sft", "base.seed")`` ->
    ``{"sft.learning_rate": ..., ..., "base.seed": 0}`` (the keys of its dvc.yaml ``params``,
    :func:`cotshape.pipeline.stage.dvc_params`). A key that is no params.yaml key (renamed in
    params.yaml but not in dvc.yaml) is an error, not skipped."""
    import dataclasses

    from cotshape.core.errors import ParamsError

    out: dict[str, Any] = {}
    missing = object()
    for name in sections:
        value: Any = p
        for part in name.split("."):
            value = getattr(value, part, missing)
            if value is missing:
                raise ParamsError(f"dvc.yaml: params key {name!r} is not a params.yaml key")
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


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


@contextmanager
def stage_run(stage: str, p: Any = None, *, task: str | None = None, set: str | None = None,
              sections: tuple[str, ...] | list[str] = (), inputs: list[str | os.PathLike] = (),
              outputs: list[str | os.PathLike] = (), datasets: dict[str, str] | None = None,
              tags: dict[str, Any] | None = None, name: str | None = None,
              tracker: Tracker | None = None) -> Iterator[TrackedRun]:
    """One MLflow run for one execution of a pipeline stage, named ``stage@task-set``.

    Tags: ``stage``, ``task``, ``set``, student/teacher (``p.base``), git commit / DVC revision,
    ``input.<path>.md5`` (or ``.stat``, see :func:`path_hash`) for every input and, when the
    block ends without error, ``output.<path>.md5`` for every output. Params: the ``sections`` of
    ``p`` (:func:`stage_params`). Dataset inputs: ``datasets`` ``{path: context}``; by default
    every ``.jsonl`` input, context ``input``. Tracking off or broken: a no-op run, no hashing."""
    if tracker is None:
        tracker = Tracker(p.tracking.experiment, p.tracking.tracking_uri) if p is not None else Tracker()
    label = "-".join(str(x) for x in (task, set) if x is not None)
    name = name or (f"{stage}@{label}" if label else stage)
    base = getattr(p, "base", None)
    all_tags = run_tags(task=task, set=set, student=getattr(base, "student", None),
                        teacher=getattr(base, "teacher", None), stage=stage, **(tags or {}))
    with tracker.run(name, tags=all_tags, params=stage_params(p, sections) if p is not None else None) as run:
        if run.active:
            hashes: dict[str, tuple[str, str]] = {}
            run.set_tags(hash_tags("input", list(inputs), hashes))
            chosen = datasets if datasets is not None else {str(x): "input" for x in inputs if str(x).endswith(".jsonl")}
            for path, context in chosen.items():
                h = hashes.get(str(path))
                run.log_dataset(path, context, digest=h[1] if h else None)
        yield run
        if run.active:
            run.set_tags(hash_tags("output", list(outputs)))


def begin_stage(stage: str, p: Any = None, **kw: Any) -> TrackedRun:
    """Start :func:`stage_run` for a stage script without indenting its body; ``stage_main``
    (or :func:`end_stage_runs`) ends it: FINISHED, or FAILED when the stage raised."""
    cm = stage_run(stage, p, **kw)
    run = cm.__enter__()
    _STAGE_RUNS.append(cm)
    return run


def end_stage_runs(error: BaseException | None = None) -> None:
    """End the runs :func:`begin_stage` started, newest first (FAILED when ``error`` is given)."""
    while _STAGE_RUNS:
        cm = _STAGE_RUNS.pop()
        try:
            if error is None:
                cm.__exit__(None, None, None)
            else:
                cm.__exit__(type(error), error, error.__traceback__)
        except BaseException as e:  # the same error re-raised by the generator, or tracking broke
            if e is not error:
                warnings.warn(f"ending the MLflow run failed: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)


def write_run_file(folder: str | os.PathLike, run: TrackedRun, tracker_uri: str | None = None) -> Path | None:
    """Record ``run`` in ``folder/mlflow_run.json`` (atomically), so that a later stage reading
    the folder (evaluate scoring an SFT output) can link its run to this one. Nothing without a run.

    The file is local MLflow state, not a result: ``.dvcignore`` keeps it out of the folder's DVC
    hash (so a retrained model with identical weights keeps its hash) and out of the cache and
    remotes. It records the folder's own hash (:func:`path_hash`, the run file left out), so
    that :func:`read_run_file` ignores it once the folder holds another model (a ``dvc checkout``
    of another experiment leaves an ignored file in place)."""
    if run.run_id is None or not Path(folder).is_dir():
        return None
    path = Path(folder) / SFT_RUN_FILE
    write_text(path, json.dumps({"run_id": run.run_id, "run_name": run.name,
                                 "tracking_uri": tracker_uri or run._tracker.uri,
                                 "experiment": run._tracker.experiment,
                                 "folder_hash": list(path_hash(folder) or ())}, indent=2) + "\n", mode=0o644)
    return path


def read_run_file(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The run recorded by :func:`write_run_file` in ``folder``, or None: no file, an unreadable
    one, or one written for other contents of the folder (stale)."""
    path = Path(folder) / SFT_RUN_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (isinstance(data, dict) and data.get("run_id")):
        return None
    return data if data.get("folder_hash") == list(path_hash(folder) or ()) else None


def head_jsonl(path: str | os.PathLike, n: int = GENERATIONS_N) -> list[dict[str, Any]]:
    """The first ``n`` records of a JSONL file (for :meth:`TrackedRun.log_generations`); [] when
    the file is missing or unreadable (tracking never fails a stage)."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if len(out) >= n:
                    break
                if line.strip():
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        out.append(rec)
    except (OSError, ValueError):
        pass
    return out
