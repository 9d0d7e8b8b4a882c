"""Hashes of a stage's input and output files and folders, as tagged on its MLflow run: DVC's md5
(the same as in dvc.lock) up to :data:`HASH_MAX_BYTES`, a cheap stat listing above.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from cotshape.core.artifacts import SFT_RUN_FILE
from cotshape.core.hashing import md5_file

# an input larger than this (md5 at ~300-600 MB/s: about 1 s) is hashed by its file listing
# (input.<path>.stat); by size, not by time, so the same folder gets the same kind of tag every run
HASH_MAX_BYTES = 256 << 20


def is_run_file(name: str) -> bool:
    """The run file or a temp file of its atomic write (``.mlflow_run.json.*.tmp``)."""
    return name == SFT_RUN_FILE or (name.startswith(f".{SFT_RUN_FILE}.") and name.endswith(".tmp"))


def path_hash(path: str | os.PathLike, max_bytes: int = HASH_MAX_BYTES) -> tuple[str, str] | None:
    """``("md5", hash)`` of a file or folder in DVC's style, or ``("stat", hash)`` when it holds
    more than ``max_bytes`` (model folders: a full md5 would take over a second); None when
    ``path`` does not exist.

    File: md5 of its bytes. Folder: md5 of the JSON list of ``{"md5", "relpath"}`` of its files
    (sorted by relative path) + ``.dir``, as DVC hashes a directory. The ``stat`` variant hashes
    the list of ``{"relpath", "size", "mtime_ns"}`` instead: cheap, and it changes whenever a file
    is rewritten, but it is not DVC's hash."""
    p = Path(path)
    if not p.exists():
        return None
    # the run file is local MLflow state, not part of the result (.dvcignore leaves it out of DVC's hash too)
    files = [p] if p.is_file() else sorted((f for f in p.rglob("*") if f.is_file() and not is_run_file(f.name)),
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
