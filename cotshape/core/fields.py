"""The one way a params dataclass declares a key: its default, its documentation and the bounds
the validator (:mod:`cotshape.core.config`) checks. Used by every section's dataclass, the SFT
section (:mod:`cotshape.sft.params`) included; README's params table is generated from it."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def param(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
          max: float | None = None, default_factory: Any = None) -> Any:
    """A dataclass field with ``help``, ``choices``, ``min`` and ``max`` in its metadata."""
    meta = {"help": help, "choices": choices, "min": min, "max": max}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)
