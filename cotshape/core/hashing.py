"""File hashes shared by the code fingerprints (depgraph) and run tracking (tracker).

Standard library only: :mod:`cotshape.pipeline.depgraph` imports it to fingerprint code.
"""

from __future__ import annotations

import hashlib
import os

_CHUNK = 1 << 22  # 4 MiB: model shards are hashed without reading them whole


def md5_file(path: str | os.PathLike) -> str:
    """The md5 of a file's bytes (as DVC 3 computes it), read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
