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

import difflib
import importlib
import sys

from cotshape.core.errors import UnknownTaskError
from cotshape.tasks import registry as _registry
from cotshape.tasks.base import Problem, Task, Verdict
from cotshape.tasks.registry import register

ENTRY_POINT_GROUP = "cotshape.tasks"
_PLUGINS_LOADED = False


def _load_builtin() -> None:
    # imported here so that `import cotshape.tasks` stays cheap and cycles are impossible
    from cotshape.tasks import countdown, gsm8k, math, mbpp  # noqa: F401

    global _PLUGINS_LOADED
    if not _PLUGINS_LOADED:
        _PLUGINS_LOADED = True
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
    return sorted(_registry._REGISTRY)


def get_task(name: str) -> Task:
    _load_builtin()
    if name not in _registry._REGISTRY:
        close = difflib.get_close_matches(name, list(_registry._REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint} (known: {', '.join(sorted(_registry._REGISTRY))})")
    return _registry._REGISTRY[name]()


__all__ = ["Problem", "Task", "UnknownTaskError", "Verdict", "get_task", "list_tasks", "load_task_modules",
           "register"]
