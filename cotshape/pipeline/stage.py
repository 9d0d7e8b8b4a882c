"""Helpers shared by the thin stage scripts in ``stages/``.

A stage script parses its paths from argv (dvc.yaml declares them), loads and validates
params.yaml, calls into cotshape and writes its outs atomically. :func:`stage_main` turns the
errors a user can cause (a :class:`~cotshape.core.errors.CotshapeError`: bad params, malformed input
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

from cotshape.core.config import Params, load_params
from cotshape.core.errors import CotshapeError, StageError, configure_logging, debug_enabled

__all__ = ["PARAMS_FILE", "SKIPPED", "StageError", "generate_with_progress", "load_backend", "params", "report_user_error",
           "stage_main"]

PARAMS_FILE = os.environ.get("COTSHAPE_PARAMS", "params.yaml")
#: written into an SFT output folder instead of a model when the training set was empty
from cotshape.core.artifacts import SKIPPED  # noqa: E402  (re-exported for the stage scripts)


def stage_main(fn: Callable[[list[str] | None], Any]) -> Callable[[list[str] | None], int]:
    """Wrap a stage's ``main(argv)``: user errors -> ``error: ...`` on stderr, exit 2. Started as
    a program (``argv`` None), the stage first re-executes itself with jemalloc preloaded where
    one is installed (:func:`cotshape.core.allocator.exec_with_jemalloc`; ``COTSHAPE_ALLOCATOR=glibc``
    keeps glibc)."""

    @functools.wraps(fn)
    def wrapper(argv: list[str] | None = None) -> int:
        if argv is None:
            from cotshape.core.allocator import exec_with_jemalloc

            exec_with_jemalloc()
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        configure_logging()
        t0 = time.time()
        try:
            fn(argv)
        except CotshapeError as e:
            # only the project's own errors: a KeyError or ValueError from elsewhere is a bug
            # and keeps its traceback
            _end_stage_runs(e)
            report_user_error(e)
            return 2
        except BaseException as e:
            _end_stage_runs(e)
            raise
        _end_stage_runs(None)
        print(f"[{Path(sys.argv[0]).stem}] done in {time.time() - t0:.1f}s", file=sys.stderr)
        return 0

    return wrapper


def _end_stage_runs(error: BaseException | None) -> None:
    """End the MLflow run the stage began (``cotshape.tracking.stage_run.begin_stage``), if any."""
    tracking = sys.modules.get("cotshape.tracking.stage_run")
    if tracking is not None:
        tracking.end_stage_runs(error)


def report_user_error(e: BaseException) -> None:
    """Print a user error as one line ``error: ...`` (after its traceback when ``COTSHAPE_DEBUG=1``)."""
    if debug_enabled():
        import traceback

        traceback.print_exception(e, file=sys.stderr)
    print(f"error: {e}", file=sys.stderr)


def dvc_params(stage: str, dvc_file: str | os.PathLike | None = None) -> tuple[str, ...]:
    """The params keys ``stage`` declares in dvc.yaml (its ``params:``; a foreach/matrix stage's
    body): what DVC reruns it on, and so what its MLflow run records. One list, kept in dvc.yaml.

    ``dvc_file``: by default the dvc.yaml of the working directory (``dvc repro`` runs a stage
    there), else the repository's. A stage missing from it or a key that is not a string is an
    error naming the file; a key that is no params.yaml key is refused by :func:`stage_params`."""
    import yaml

    if dvc_file is None:
        from cotshape.pipeline.depgraph import REPO_ROOT

        dvc_file = Path("dvc.yaml") if Path("dvc.yaml").is_file() else REPO_ROOT / "dvc.yaml"
    path = Path(dvc_file)
    try:
        stages = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError) as e:
        raise StageError(f"{path}: cannot read the stage graph: {e}") from None
    if stage not in stages:
        raise StageError(f"{path}: no stage {stage!r} (has: {', '.join(stages)})")
    body = stages[stage].get("do", stages[stage])
    keys = body.get("params") or []
    for k in keys:
        if not isinstance(k, str):
            raise StageError(f"{path}: stage {stage!r}: params entry {k!r} is not a params.yaml key "
                             "(cotshape reads only params.yaml keys)")
    return tuple(keys)


def params() -> Params:
    return load_params(PARAMS_FILE)


def load_backend(p: Params, model_path, batch_size: int, **kw):
    """The generation backend ``base.backend`` on the params' device and dtype (``base.device``,
    ``base.dtype``): one choice for every generating stage (sample, evaluate, paraphrase, the
    model-written flawed CoTs of degrade).

    vLLM gets ``sample.tensor_parallel_size`` and ``base.seed`` (``batch_size`` is the
    transformers backend's: vLLM schedules its own batches) and loads folders only: for a LoRA
    SFT output folder the adapter is merged onto its base model into a temporary folder first
    (:func:`~cotshape.generation.vllm_backend.merged_lora_folder`, removed when the backend is
    closed or the process ends). The transformers backend takes an SFT model already loaded
    and merged in memory through ``model=`` / ``tokenizer=`` (the evaluate stage does this).
    """
    from cotshape.generation import get_backend

    name = p.base.backend
    if name == "vllm":
        from cotshape.generation.vllm_backend import import_vllm, merged_lora_folder

        import_vllm()  # name the missing extra before any merging
        owned = merged_lora_folder(model_path, dtype=p.base.dtype)  # None unless a LoRA SFT folder
        if owned is not None:
            model_path, kw["owned_dir"] = owned.name, owned
        kw = {"tensor_parallel_size": p.sample.tensor_parallel_size, "seed": p.base.seed, **kw}
    return get_backend(name, str(model_path), device=p.base.device, dtype=p.base.dtype, batch_size=batch_size, **kw)


def generate_with_progress(backend, prompts: list, params, desc: str, seeds: list[int] | None = None,
                           show: bool = True) -> list:
    """``backend.generate(prompts, params, seeds=seeds)`` with a progress bar: prompts done, their
    rate and ETA, and generated tokens per second (as the sampling job shows). For stages that
    hand a whole set to the backend in one call (paraphrase, model-written flawed CoTs)."""
    import time as _time

    from tqdm import tqdm

    bar = tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not show or not prompts, dynamic_ncols=True)
    tokens, t0 = 0, _time.perf_counter()

    def on_tokens(n: int) -> None:
        nonlocal tokens
        tokens += n
        bar.set_postfix(tok_s=f"{tokens / max(_time.perf_counter() - t0, 1e-9):.0f}", refresh=False)

    try:
        return backend.generate(prompts, params, progress=on_tokens, seeds=seeds,
                                on_result=lambda i, comps: bar.update(1))
    finally:
        bar.close()
