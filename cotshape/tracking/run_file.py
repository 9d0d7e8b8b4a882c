"""The run file of an SFT output folder (``mlflow_run.json``): which MLflow run trained the model in
it, so that a later stage reading the folder (evaluate) can link its run to that one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cotshape.core.artifacts import SFT_RUN_FILE
from cotshape.core.records import write_text
from cotshape.tracking.hashes import path_hash
from cotshape.tracking.tracker import TrackedRun


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
                                 "tracking_uri": tracker_uri or run.tracker.uri,
                                 "experiment": run.tracker.experiment,
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
