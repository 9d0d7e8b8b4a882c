"""What produced a number: cotshape's commit, the versions of the packages that move scores, and
the hardware and batch sizes (issue #25). The evaluate stage writes one block into every
evaluation metrics file (``"provenance"``); the report stage writes ``metrics/provenance.json``
from them, and ``cotshape compare`` warns when the experiments it pools differ in any field.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

#: the packages whose version can move a score (distribution names as pip knows them)
PACKAGES = ("torch", "transformers", "trl", "peft", "vllm", "math-verify", "reasoning-gym")
#: field of a merged document where the evaluation files disagree: {field: {file: value}}
MIXED = "mixed"
_REPO = Path(__file__).resolve().parents[2]


def package_versions(packages=PACKAGES) -> dict[str, str | None]:
    """``{package: version}`` (key with ``_`` for ``-``: ``math_verify``); None when not installed."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name.replace("-", "_")] = version(name)
        except PackageNotFoundError:
            out[name.replace("-", "_")] = None
    return out


def git_head(repo: str | os.PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` in ``repo`` (the working directory when None); None outside a git
    checkout or without git. The one place that asks git for a commit (the tracker's tags too)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() if head.returncode == 0 and head.stdout.strip() else None


def cotshape_commit(repo: str | Path = _REPO) -> str | None:
    """The git commit of the cotshape checkout (``+dirty`` when tracked files under cotshape/ or
    stages/ have uncommitted changes); None outside a git checkout (an installed wheel)."""
    head = git_head(repo)
    if head is None:
        return None
    try:
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--",
                                "cotshape", "stages"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return head
    return head + ("+dirty" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere)."""
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    import platform

    return platform.processor() or None


def gpu_model(device: str) -> str | None:
    """The GPU's name when ``device`` is cuda, else None."""
    if not str(device).startswith("cuda"):
        return None
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def provenance(*, backend: str, dtype: str, device: str, batch_size: dict[str, int],
               tensor_parallel_size: int | None = None) -> dict[str, Any]:
    """The provenance block of one stage's numbers (``dtype`` as resolved, e.g. ``bfloat16``)."""
    return {
        "cotshape_commit": cotshape_commit(),
        "versions": package_versions(),
        "backend": backend,
        "dtype": dtype,
        "device": device,
        "cpu": cpu_model(),
        "gpu": gpu_model(device),
        "batch_size": dict(batch_size),
        "tensor_parallel_size": tensor_parallel_size if backend == "vllm" else None,
    }


def merge(blocks: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One document from the blocks of several files (name -> block): a field every file agrees on
    keeps its value; a field where they differ becomes None and is listed under ``"mixed"``
    (``{field: {name: value}}``, dotted for nested fields); ``batch_size`` per stage is merged."""
    if not blocks:
        return {}
    names = sorted(blocks)
    out: dict[str, Any] = {}
    mixed: dict[str, dict[str, Any]] = {}

    def walk(prefix: str, values: dict[str, Any], into: dict[str, Any]) -> None:
        keys = sorted({k for v in values.values() if isinstance(v, dict) for k in v})
        for k in keys:
            sub = {n: (v.get(k) if isinstance(v, dict) else None) for n, v in values.items()}
            if all(isinstance(x, dict) for x in sub.values()):
                into[k] = {}
                walk(f"{prefix}{k}.", sub, into[k])
            elif len({repr(x) for x in sub.values()}) == 1:
                into[k] = sub[names[0]]
            else:
                into[k] = None
                mixed[f"{prefix}{k}"] = sub

    walk("", {n: blocks[n] for n in names}, out)
    if mixed:
        out[MIXED] = mixed
    return out
