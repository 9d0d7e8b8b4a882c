"""Task registry: ``get_task(name)`` and ``list_tasks()``.

Tasks register themselves with :func:`register`; a duplicate name is refused and an unknown
name is answered with the closest registered names.
"""

from __future__ import annotations

import difflib

from cotshape.errors import UnknownTaskError
from cotshape.tasks.base import Problem, Task, Verdict

_REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: add a Task subclass to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered by {_REGISTRY[cls.name].__name__}")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    # imported here so that `import cotshape.tasks` stays cheap and cycles are impossible
    from cotshape.tasks import countdown, gsm8k, math, mbpp  # noqa: F401


def list_tasks() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_task(name: str) -> Task:
    _load_builtin()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3, cutoff=0.4)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        raise UnknownTaskError(f"unknown task {name!r}{hint} (known: {', '.join(sorted(_REGISTRY))})")
    return _REGISTRY[name]()


__all__ = ["Problem", "Task", "UnknownTaskError", "Verdict", "get_task", "list_tasks", "register"]
