"""The project's own error types: errors a user can cause and fix.

The stage scripts (:func:`cotshape.pipeline.stage.stage_main`) and the ``cotshape`` command print a
:class:`CotshapeError` as one line ``error: ...`` and exit with status 2; every other exception
is a bug and keeps its traceback. ``COTSHAPE_DEBUG=1`` prints the traceback of user errors too.

Errors about a bad value also subclass :class:`ValueError`, and errors about a resource that
cannot be used also subclass :class:`RuntimeError`, so callers that caught those keep working.
Each module re-exports the class it raises (``cotshape.core.config.ParamsError``,
``cotshape.core.records.RecordError``, ...); they all live here so that one ``except`` catches them.
:func:`did_you_mean` is the one hint for a misspelt name (a params key, a task, a preset, a stage).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping

#: environment variable: when set to 1, user errors print their traceback too
DEBUG_ENV = "COTSHAPE_DEBUG"


class CotshapeError(Exception):
    """An error the user can fix (bad params, a malformed file, an unknown name, a busy output)."""


class InputError(CotshapeError, ValueError):
    """A bad value given by the user: a CLI option, a name, a spec."""


class ParamsError(InputError):
    """A bad params file: unknown key, wrong type or value out of range."""


class RecordError(InputError):
    """A malformed record file; the message starts with ``path:line:``."""


class UnknownTaskError(InputError):
    """An unknown task name; the message suggests the closest known names."""


class ModelSpecError(InputError):
    """A model spec that names no model (unknown alias, missing folder)."""


class DataNotFoundError(CotshapeError, FileNotFoundError):
    """A data source (a local dataset folder, a hub dataset) has no data where it should."""


class StageError(CotshapeError, RuntimeError):
    """A stage cannot run with these inputs (e.g. an empty training set)."""


class SandboxError(CotshapeError, RuntimeError):
    """The sandbox cannot run programs here (bad mode, bwrap missing where required, a failed
    self-test): every program would be graded wrong, so verification stops instead."""


class MissingExtraError(CotshapeError, ImportError):
    """An optional dependency (an extra such as ``gpu`` for vLLM) is not installed."""


class BusyError(CotshapeError, RuntimeError):
    """Another process is working on the same output (it holds the lock)."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.5, *,
                 aliases: Mapping[str, str] | None = None) -> str:
    """The hint for an unknown ``name``: ``did you mean 'a' or 'b'?`` naming up to ``n`` of
    ``choices`` at least ``cutoff`` similar (:func:`difflib.get_close_matches`, closest first), or
    ``""`` when none is. ``aliases`` are other spellings matched too, each naming its choice
    (``{"gemma-2-2b": "paper-gemma-2-2b"}``); a choice is named once."""
    aliases = aliases or {}
    close = difflib.get_close_matches(name, [*choices, *aliases], n=n, cutoff=cutoff)
    close = list(dict.fromkeys(aliases.get(c, c) for c in close))
    return f"did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def debug_enabled() -> bool:
    """Whether ``COTSHAPE_DEBUG`` asks for tracebacks of user errors."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def configure_logging(level: int | None = None) -> None:
    """Send the ``cotshape`` loggers' INFO messages (e.g. sampling's "resuming") to stderr.

    Configures only the ``cotshape`` logger, once (a second call changes nothing), so that
    libraries' own logging stays as they set it. ``COTSHAPE_DEBUG=1`` lowers the level to DEBUG.
    """
    import logging
    import sys

    class _Stderr(logging.StreamHandler):
        # the stream is looked up on each record: sys.stderr may be replaced after setup (pytest)
        @property
        def stream(self):  # type: ignore[override]
            return sys.stderr

        @stream.setter
        def stream(self, value) -> None:
            pass

    logger = logging.getLogger("cotshape")
    if any(getattr(h, "_cotshape", False) for h in logger.handlers):
        return
    handler = _Stderr()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler._cotshape = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level if level is not None else (logging.DEBUG if debug_enabled() else logging.INFO))
