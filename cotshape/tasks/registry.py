"""The task registry: the name -> Task class table that ``@register`` fills. A module of its own
so that the task modules import it without importing the package that imports them
(``cotshape.tasks`` re-exports :func:`register` for plugins and user tasks)."""

from __future__ import annotations

from cotshape.tasks.base import Task

#: task name -> its Task class (``cotshape.tasks.list_tasks`` loads the tasks that fill it)
REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    """Class decorator: add a Task subclass to the registry under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise ValueError(f"task {cls.name!r} is already registered by {REGISTRY[cls.name].__name__}")
    REGISTRY[cls.name] = cls
    return cls
