"""The ``trl.SFTConfig`` SFT trains with, built setting by setting from the ``sft:`` params
(:func:`build_sft_config`), and the dtype training computes in (:func:`training_dtype`)."""

from __future__ import annotations

import os
from typing import Any

from cotshape.sft.params import SFTParams

# peft's "all-linear": every Linear but the output head, i.e. the attention and MLP projections
# of a decoder (q/k/v/o, gate/up/down on Llama, Gemma, Qwen, Mistral), whatever their names.
LORA_TARGET_MODULES = "all-linear"


# --------------------------------------------------------------------------------------------
# dtype / device


def training_dtype(dtype: str) -> str:
    """The name of the dtype SFT computes in: ``auto`` -> ``bfloat16`` where bf16 compute is fast
    on this machine, else ``float32``; a given name is returned as it is.

    Unlike :func:`cotshape.core.models.resolve_dtype` (inference; returns a ``torch.dtype`` and
    may pick fp16 on a GPU), never fp16: fp16 training would
    need loss scaling, so a GPU without bf16 trains in fp32."""
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    from cotshape.core.models import cpu_has_fast_bf16

    # AVX512-BF16/AMX: bf16 autocast ~1.6x fp32 (measured); without them bf16 is emulated, slower
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


def build_sft_config(params: SFTParams, out_dir: str | os.PathLike):
    """The ``trl.SFTConfig`` for ``params``; every setting that matters is set explicitly."""
    import torch
    from trl import SFTConfig

    dtype = training_dtype(params.dtype)
    extra: dict[str, Any] = {}
    # transformers >= 5.2x renamed gradient_checkpointing (kept as an alias that warns); TRL
    # defaults the old name to True, so both are set
    if "activation_checkpointing" in SFTConfig.__dataclass_fields__:
        extra["activation_checkpointing"] = params.gradient_checkpointing
    return SFTConfig(
        **extra,
        output_dir=str(out_dir),
        num_train_epochs=float(params.epochs),
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum,
        learning_rate=params.learning_rate,
        lr_scheduler_type="linear",
        warmup_steps=params.warmup_ratio,  # < 1: a ratio of the total steps (transformers 5)
        weight_decay=params.weight_decay,
        # TRL defaults bf16=True; with precision amp, bf16 is autocast over fp32 master weights; with
        # precision bf16 the weights are bf16 themselves (train_sft loads them so) and autocast is on,
        # as the authors' sft.py ran (torch_dtype=torch.bfloat16, bf16=True)
        bf16=dtype == "bfloat16" or params.precision == "bf16",
        fp16=False,
        use_cpu=not torch.cuda.is_available(),  # transformers refuses CPU bf16 autocast otherwise
        gradient_checkpointing=params.gradient_checkpointing,
        completion_only_loss=True,
        padding_free=params.padding_free,
        # padding-free batches cannot be cut by the collator: tokenize_records cuts to max_length
        max_length=None if params.padding_free else params.max_length,
        packing=False,  # packing would change the number of examples per step (and the loss curve)
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        logging_first_step=True,
        save_strategy="no",  # train_sft saves the final model itself, atomically
        eval_strategy="no",
        report_to="none",  # MLflow is fed by cotshape.tracking.tracker's callback
        seed=params.seed,
        data_seed=params.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
