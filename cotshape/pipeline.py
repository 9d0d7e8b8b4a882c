"""Helpers shared by the thin stage scripts in ``stages/``.

A stage script parses its paths from argv (dvc.yaml declares them), loads and validates
params.yaml, calls into cotshape and writes its outs atomically. :func:`stage_main` turns the
errors a user can cause (a :class:`~cotshape.errors.CotshapeError`: bad params, malformed input
files, unknown names) into one line on stderr and exit code 2, with no traceback
(``COTSHAPE_DEBUG=1`` prints it too); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cotshape.config import Params, load_params
from cotshape.errors import CotshapeError, StageError, configure_logging, debug_enabled

__all__ = ["PARAMS_FILE", "SKIPPED", "StageError", "load_backend", "params", "report_user_error", "stage_main"]

PARAMS_FILE = os.environ.get("COTSHAPE_PARAMS", "params.yaml")
#: written into an SFT output folder instead of a model when the training set was empty
SKIPPED = "SKIPPED.json"


def stage_main(fn: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """Wrap a stage's ``main(argv)``: user errors -> ``error: ...`` on stderr, exit 2."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        configure_logging()
        t0 = time.time()
        try:
            fn(argv)
        except CotshapeError as e:
            # only the project's own errors: a KeyError or ValueError from elsewhere is a bug
            # and keeps its traceback
            report_user_error(e)
            return 2
        print(f"[{Path(sys.argv[0]).stem}] done in {time.time() - t0:.1f}s", file=sys.stderr)
        return 0

    return wrapper


def report_user_error(e: BaseException) -> None:
    """Print a user error as one line ``error: ...`` (after its traceback when ``COTSHAPE_DEBUG=1``)."""
    if debug_enabled():
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    print(f"error: {e}", file=sys.stderr)


def params() -> Params:
    return load_params(PARAMS_FILE)


def load_backend(p: Params, model_path, batch_size: int, name: str = "transformers", **kw):
    """A generation backend on the params' device and dtype (``base.device``, ``base.dtype``)."""
    from cotshape.generation import get_backend

    return get_backend(name, str(model_path), device=p.base.device, dtype=p.base.dtype, batch_size=batch_size, **kw)
