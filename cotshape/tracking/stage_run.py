"""One MLflow run per execution of a pipeline stage, named ``stage@task-set``: its tags, its params
(the stage's dvc.yaml ``params:`` keys, :func:`stage_params`), its input/output hashes and datasets.

    run = begin_stage("select", p, task=args.task, sections=dvc_params("select"),
                      inputs=[args.problems, args.verified], outputs=[args.metrics])
    ...                                   # the stage's work; run.log_metrics / log_generations

stage_main (cotshape/pipeline/stage.py) ends the run: FINISHED with its outputs' hashes, or FAILED.
``with stage_run(...) as run:`` is the same as a context manager.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from cotshape.tracking.hashes import hash_tags
from cotshape.tracking.tracker import GENERATIONS_N, TrackedRun, Tracker, flatten_params, run_tags

_STAGE_RUNS: list[Any] = []  # stage_run context managers begun by begin_stage, ended by end_stage_runs


def stage_params(p: Any, sections: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """The params.yaml values a stage depends on, flattened: ``("sft", "base.seed")`` ->
    ``{"sft.learning_rate": ..., ..., "base.seed": 0}`` (the keys of its dvc.yaml ``params``,
    :func:`cotshape.pipeline.stage.dvc_params`). A key that is no params.yaml key (renamed in
    params.yaml but not in dvc.yaml) is an error, not skipped."""
    import dataclasses

    from cotshape.core.errors import ParamsError

    out: dict[str, Any] = {}
    missing = object()
    for name in sections:
        value: Any = p
        for part in name.split("."):
            value = getattr(value, part, missing)
            if value is missing:
                raise ParamsError(f"dvc.yaml: params key {name!r} is not a params.yaml key")
        if dataclasses.is_dataclass(value):
            value = dataclasses.asdict(value)
        if isinstance(value, dict):
            out.update(flatten_params(value, name + "."))
        else:
            out[name] = value
    return out


@contextmanager
def stage_run(stage: str, p: Any = None, *, task: str | None = None, set: str | None = None,
              sections: tuple[str, ...] | list[str] = (), inputs: list[str | os.PathLike] = (),
              outputs: list[str | os.PathLike] = (), datasets: dict[str, str] | None = None,
              tags: dict[str, Any] | None = None, name: str | None = None,
              tracker: Tracker | None = None) -> Iterator[TrackedRun]:
    """One MLflow run for one execution of a pipeline stage, named ``stage@task-set``.

    Tags: ``stage``, ``task``, ``set``, student/teacher (``p.base``), git commit / DVC revision,
    ``input.<path>.md5`` (or ``.stat``, see :func:`~cotshape.tracking.hashes.path_hash`) for every input and, when the
    block ends without error, ``output.<path>.md5`` for every output. Params: the ``sections`` of
    ``p`` (:func:`stage_params`). Dataset inputs: ``datasets`` ``{path: context}``; by default
    every ``.jsonl`` input, context ``input``. Tracking off or broken: a no-op run, no hashing."""
    if tracker is None:
        tracker = Tracker(p.tracking.experiment, p.tracking.tracking_uri) if p is not None else Tracker()
    label = "-".join(str(x) for x in (task, set) if x is not None)
    name = name or (f"{stage}@{label}" if label else stage)
    base = getattr(p, "base", None)
    all_tags = run_tags(task=task, set=set, student=getattr(base, "student", None),
                        teacher=getattr(base, "teacher", None), stage=stage, **(tags or {}))
    with tracker.run(name, tags=all_tags, params=stage_params(p, sections) if p is not None else None) as run:
        if run.active:
            hashes: dict[str, tuple[str, str]] = {}
            run.set_tags(hash_tags("input", list(inputs), hashes))
            chosen = datasets if datasets is not None else {str(x): "input" for x in inputs if str(x).endswith(".jsonl")}
            for path, context in chosen.items():
                h = hashes.get(str(path))
                run.log_dataset(path, context, digest=h[1] if h else None)
        yield run
        if run.active:
            run.set_tags(hash_tags("output", list(outputs)))


def begin_stage(stage: str, p: Any = None, **kw: Any) -> TrackedRun:
    """Start :func:`stage_run` for a stage script without indenting its body; ``stage_main``
    (or :func:`end_stage_runs`) ends it: FINISHED, or FAILED when the stage raised."""
    cm = stage_run(stage, p, **kw)
    run = cm.__enter__()
    _STAGE_RUNS.append(cm)
    return run


def end_stage_runs(error: BaseException | None = None) -> None:
    """End the runs :func:`begin_stage` started, newest first (FAILED when ``error`` is given)."""
    while _STAGE_RUNS:
        cm = _STAGE_RUNS.pop()
        try:
            if error is None:
                cm.__exit__(None, None, None)
            else:
                cm.__exit__(type(error), error, error.__traceback__)
        except BaseException as e:  # the same error re-raised by the generator, or tracking broke
            if e is not error:
                warnings.warn(f"ending the MLflow run failed: {type(e).__name__}: {e}", RuntimeWarning, stacklevel=2)


def head_jsonl(path: str | os.PathLike, n: int = GENERATIONS_N) -> list[dict[str, Any]]:
    """The first ``n`` records of a JSONL file (for :meth:`TrackedRun.log_generations`); [] when
    the file is missing or unreadable (tracking never fails a stage)."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if len(out) >= n:
                    break
                if line.strip():
                    rec = json.loads(line)
                    if isinstance(rec, dict):
                        out.append(rec)
    except (OSError, ValueError):
        pass
    return out
