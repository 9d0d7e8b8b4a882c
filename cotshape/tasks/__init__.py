"""Task registry: ``get_task(name)`` and ``list_tasks()``.

Tasks register themselves with :func:`register`; a duplicate name is refused and an unknown
name is answered with the closest registered names. Besides the built-in tasks, a task can live
outside this package, in either of two ways (no edit of cotshape needed):

* an importable module named in ``base.task_modules`` (params.yaml), imported when params are
  validated, e.g. ``task_modules: [mytasks.parity]`` with ``mytasks/parity.py`` in the repository;
* an installed package declaring the entry point group ``cotshape.tasks``
  (``[project.entry-points."cotshape.tasks"] parity = "mytasks.parity"`` in its pyproject.toml),
  loaded with the built-in tasks.

Either way the module registers its ``Task`` subclass with ``@register``.
"""

from __future__ import annotations

import functools
import importlib
import sys

from cotshape.core.errors import UnknownTaskError, did_you_mean
from cotshape.tasks.base import Problem, Task, Verdict
from cotshape.tasks.registry import REGISTRY, register

ENTRY_POINT_GROUP = "cotshape.tasks"


def _load_builtin() -> None:
    # imported here so that `import cotshape.tasks` stays cheap and cycles are impossible
    from cotshape.tasks import countdown, gsm8k, math, mbpp  # noqa: F401

    load_plugins()


@functools.cache
def load_plugins() -> None:
    """Import the modules of the installed entry point group ``cotshape.tasks`` so that their
    ``@register`` runs: once per process (``load_plugins.cache_clear()`` makes the next call look
    again); a plugin that fails to import is an error naming its entry point."""
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            ep.load()
        except Exception as e:
            raise UnknownTaskError(f"task plugin {ep.name!r} (entry point {ep.value!r}, group "
                                   f"{ENTRY_POINT_GROUP!r}) failed to load: {type(e).__name__}: {e}") from e


def load_task_modules(modules, key: str = "base.task_modules") -> None:
    """Import each module of ``modules`` (dotted names; the working directory is on the path, as
    for ``python -m``) so that its ``@register`` runs. A module that cannot be imported is an
    error naming ``key``."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    for i, name in enumerate(modules):
        try:
            importlib.import_module(name)
        except Exception as e:
            raise UnknownTaskError(f"{key}[{i}]: cannot import {name!r}: {type(e).__name__}: {e}") from e


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted(REGISTRY)


def get_task(name: str) -> Task:
    _load_builtin()
    if name not in REGISTRY:
        hint = did_you_mean(name, list(REGISTRY), cutoff=0.4)
        hint = f"; {hint}" if hint else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]()


__all__ = ["Problem", "Task", "UnknownTaskError", "Verdict", "get_task", "list_tasks", "load_task_modules",
           "register"]
