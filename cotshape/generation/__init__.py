"""Generation backends behind one interface (:class:`Backend`): ``transformers`` (CPU and GPU,
continuous batching) and ``vllm`` (GPU, optional extra ``gpu``). :func:`get_backend` builds one
by name; backend modules are imported only when chosen."""

from __future__ import annotations

import os

from cotshape.core.errors import InputError
from cotshape.generation.base import Backend, Completion, Prompt, SamplingParams, derive_seed

BACKENDS = ("transformers", "vllm")


def get_backend(
    name: str,
    model_path: str | os.PathLike,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int = 128,
    **kw,
) -> Backend:
    """Load ``model_path`` (a materialised folder or a hub id/local spec) into backend ``name``.

    ``batch_size`` is the number of sequences decoded together (transformers); vLLM schedules
    its own batches and takes ``tensor_parallel_size``, ``seed`` etc. through ``kw``.
    """
    if name == "transformers":
        from cotshape.generation.transformers_backend import TransformersBackend

        return TransformersBackend(model_path, device=device, dtype=dtype, batch_size=batch_size, **kw)
    if name == "vllm":
        from cotshape.generation.vllm_backend import VLLMBackend, import_vllm

        import_vllm()  # fail with the extra's name before anything else
        if device not in ("auto", "cuda"):
            raise InputError(f"the vllm backend runs on CUDA GPUs only, got device={device!r}")
        return VLLMBackend(model_path, dtype=dtype, **kw)
    raise InputError(f"unknown backend {name!r} (choose from: {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "Backend", "Completion", "Prompt", "SamplingParams", "derive_seed", "get_backend"]
