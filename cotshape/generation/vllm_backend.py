"""The ``vllm`` generation backend (GPU; optional extra ``gpu``: ``pip install 'cotshape[gpu]'``).

vLLM is imported only when this backend is built: it is a CUDA build that pins its own torch and
transformers, so it can never be a core dependency (DESIGN.md §5). Chat prompts are rendered with
the model's chat template here and handed to vLLM as token ids (``{"prompt_token_ids": ...}``), so
a template that already emits BOS does not get a second one. Text prompts (``base.prompt_format:
plain``, :func:`cotshape.tasks.base.student_prompt`) carry their own BOS and are tokenized the
same way, so vLLM decodes from exactly the ids SFT trained on; ``SamplingParams.stop`` (the task's
plain stop strings, e.g. "Problem:") becomes vLLM's ``stop``, whose text is not returned. Each prompt gets its own
``vllm.SamplingParams`` carrying its seed, which makes a prompt's ``n`` samples independent of
which other prompts share the call (vLLM's per-request seeded generators).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from cotshape.core.artifacts import SFT_MARKER
from cotshape.generation.base import (
    Backend,
    Completion,
    ProgressFn,
    Prompt,
    ResultFn,
    SamplingParams,
    prompt_seeds,
    truncate_at_stop,
)

MISSING_VLLM = "the vllm backend needs vLLM on a CUDA machine: pip install 'cotshape[gpu]'"


def merged_lora_folder(model_path: str | os.PathLike, dtype: str = "auto",
                       tmp_root: str | os.PathLike | None = None) -> tempfile.TemporaryDirectory | None:
    """For a LoRA SFT output folder, a temporary folder holding the adapter merged onto its base
    model (weights in ``dtype``) and the tokenizer, which vLLM loads like any model folder; None
    for anything else (a model folder, a full fine-tune: vLLM loads those as they are).

    The folder is removed by ``.cleanup()`` (:meth:`VLLMBackend.close`) or when the returned
    object is garbage collected or the process exits. It lies under ``tmp_root`` (default:
    ``$COTSHAPE_TMPDIR``, else the system's temporary folder): a merged 9B model in bf16 takes
    about 18 GB there.
    """
    folder = Path(model_path)
    marker_path = folder / SFT_MARKER
    if not marker_path.is_file():
        return None
    marker = json.loads(marker_path.read_text(encoding="utf-8"))
    if marker.get("method") == "full" or marker.get("merged"):
        return None
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotshape.core.models import _model_dir, resolve_dtype

    torch_dtype = resolve_dtype(dtype, device="cuda" if torch.cuda.is_available() else "cpu")
    base = AutoModelForCausalLM.from_pretrained(_model_dir(marker["base_model"]), dtype=torch_dtype)
    merged = PeftModel.from_pretrained(base, folder).merge_and_unload()
    tmp = tempfile.TemporaryDirectory(prefix="cotshape-merged-", dir=tmp_root or os.environ.get("COTSHAPE_TMPDIR"))
    try:
        merged.save_pretrained(tmp.name)
        # the SFT folder holds the tokenizer SFT trained with (the base model's)
        AutoTokenizer.from_pretrained(folder).save_pretrained(tmp.name)
    except BaseException:
        tmp.cleanup()
        raise
    return tmp


def import_vllm():
    """Import vllm or raise an ImportError that names the extra to install."""
    try:
        import vllm
    except ImportError as e:
        from cotshape.core.errors import MissingExtraError

        raise MissingExtraError(f"{MISSING_VLLM} ({e})") from None
    return vllm


class VLLMBackend(Backend):
    """Generation with ``vllm.LLM`` (tensor parallelism over ``tensor_parallel_size`` GPUs)."""

    name = "vllm"

    @property
    def dtype(self) -> str | None:
        """The dtype vLLM resolved (``dtype: auto`` follows the model's config)."""
        config = getattr(getattr(self.llm, "llm_engine", None), "model_config", None)
        found = getattr(config, "dtype", None)
        return None if found is None else str(found).removeprefix("torch.")

    def __init__(
        self,
        model_path: str | os.PathLike,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        seed: int = 0,
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        owned_dir: tempfile.TemporaryDirectory | None = None,
        **llm_kwargs,
    ) -> None:
        # owned_dir: a temporary folder that holds the model (merged_lora_folder), removed on close
        self._owned_dir = owned_dir
        vllm = import_vllm()
        from cotshape.core.models import _model_dir

        if tensor_parallel_size < 1:
            raise ValueError(f"tensor_parallel_size must be >= 1, got {tensor_parallel_size}")
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=_model_dir(model_path),
            tensor_parallel_size=tensor_parallel_size,
            seed=seed,
            dtype={"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype),
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            **llm_kwargs,
        )
        self.tokenizer = self.llm.get_tokenizer()


    def generate(
        self,
        prompts: list[Prompt],
        params: SamplingParams,
        progress: ProgressFn | None = None,
        seeds: list[int] | None = None,
        on_result: ResultFn | None = None,
    ) -> list[list[Completion]]:
        pseeds = prompt_seeds(params, len(prompts), seeds)
        sps = [
            self._vllm.SamplingParams(
                n=params.n,
                temperature=params.temperature,
                top_p=params.top_p,
                max_tokens=params.max_new_tokens,
                stop=list(params.stop) or None,
                include_stop_str_in_output=False,
                seed=s % (2**31),
            )
            for s in pseeds
        ]
        inputs = [{"prompt_token_ids": self.encode(p)} for p in prompts]
        outputs = self.llm.generate(inputs, sps, use_tqdm=progress is None)
        results = []
        for out in outputs:
            comps = []
            for o in out.outputs:
                text, _ = truncate_at_stop(o.text, params.stop)
                reason = "length" if o.finish_reason == "length" else "stop"
                comps.append(Completion(text=text, num_tokens=len(o.token_ids), finish_reason=reason))
                if progress is not None:
                    progress(len(o.token_ids))
            results.append(comps)
            if on_result is not None:
                on_result(len(results) - 1, comps)
        return results

    def close(self) -> None:
        self.llm = None
        if self._owned_dir is not None:
            self._owned_dir.cleanup()
            self._owned_dir = None
