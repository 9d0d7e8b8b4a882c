"""Guards that keep an unreachable MLflow store cheap: a check of the store without MLflow, a
deadline on the first request, short HTTP retries, and whether a run's process is still alive.
An unreachable store of any scheme costs a stage at most :data:`CONNECT_TIMEOUT` seconds.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from typing import Any

CONNECT_TIMEOUT = 5.0  # seconds an unreachable store may cost a stage


def is_local_store(uri: str) -> bool:
    """``sqlite:``, ``file:`` or a plain path: checked by :func:`unreachable_reason` without a
    deadline on opening it (the first open may create the schema, seconds)."""
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def bound_http_retries(uri: str) -> None:
    """For an ``http(s)`` store, few retries and a short timeout (unless the environment sets them):
    mlflow's defaults (7 retries with backoff, 120 s timeout) hang a stage for minutes on a dead
    server."""
    if uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def unreachable_reason(uri: str, timeout: float = 2.0) -> str | None:
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


def call_within(seconds: float, fn):
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


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
