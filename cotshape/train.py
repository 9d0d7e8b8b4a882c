"""Supervised fine-tuning of the student on one training set (H, G, W, P, a mixture, ...).

The paper's SFT: prompt/completion pairs in the student's chat template, loss on the completion
tokens only. We use TRL's ``SFTTrainer`` (no hand-written loop) with an ``SFTConfig`` built
deliberately from the ``sft:`` params section:

* dtype: TRL defaults to ``bf16=True``; we resolve ``auto`` to bf16 autocast only where bf16 is
  fast (CUDA with bf16, or a CPU with AVX512-BF16/AMX), fp32 elsewhere. Master weights stay fp32.
* gradient checkpointing: TRL defaults to on; we set it from params (off by default: the small
  default student fits easily and checkpointing costs ~30% compute).
* padding-free batches: the examples of a batch are concatenated into one row with per-example
  position ids (TRL's collator), so no padding is computed. Flash attention has varlen kernels for
  this; plain sdpa would build a dense block-diagonal mask over the whole row (correct, but ~5x the
  attention cost on CPU), so sdpa models train with :data:`VARLEN_SDPA`, one causal sdpa call
  per example. Tests check both give the padded loss on a fixed batch (no token attends across
  examples).

* the loss head on CPU: TRL's fused LM-head kernel runs as fp32 Python tiles over every position
  off CUDA; :func:`use_cpu_label_head` projects only the labelled positions, in bf16 autocast
  (about 1.8x a whole full fine-tuning step on 2 cores). A test checks it gives TRL's outputs.

Records are tokenized here, the way TRL tokenizes a conversational prompt/completion example
(:func:`tokenize_example`; a test checks it is identical to TRL's own preparation), because the
padding-free collator cannot enforce ``max_length`` itself and because closeness.py must use the
very same masks. The checkpoint folder is written atomically; :func:`load_trained` is what the
evaluate stage loads (LoRA adapters are merged on load).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from cotshape.errors import RecordError
from cotshape.sft_params import SFTParams

#: Written in every checkpoint folder; says how to load it (see :func:`load_trained`).
MARKER = "cotshape_sft.json"
TRAIN_LOG = "train_log.json"

# peft's "all-linear": every Linear but the output head, i.e. the attention and MLP projections
# of a decoder (q/k/v/o, gate/up/down on Llama, Gemma, Qwen, Mistral), whatever their names.
LORA_TARGET_MODULES = "all-linear"


# --------------------------------------------------------------------------------------------
# dtype / device


def resolve_dtype(dtype: str) -> str:
    """``auto`` -> ``bfloat16`` where bf16 compute is fast on this machine, else ``float32``.

    Unlike :func:`cotshape.models.resolve_dtype` (inference), never fp16: fp16 training would
    need loss scaling, so a GPU without bf16 trains in fp32."""
    if dtype != "auto":
        return dtype
    import torch

    if torch.cuda.is_available():
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    from cotshape.models import cpu_has_fast_bf16

    # AVX512-BF16/AMX: bf16 autocast ~1.6x fp32 (measured); without them bf16 is emulated, slower
    return "bfloat16" if cpu_has_fast_bf16() else "float32"


# --------------------------------------------------------------------------------------------
# data


def to_conversational(record: dict[str, Any], index: int = 0) -> tuple[list[dict[str, str]], str]:
    """Validate a training record and return ``(prompt messages, completion text)``."""
    where = f"record {index}" + (f" (id {record['id']!r})" if isinstance(record, dict) and "id" in record else "")
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a dict, got {type(record).__name__}")
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, list) or not prompt or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in prompt
    ):
        raise RecordError(f"{where}: 'prompt' must be a non-empty list of {{'role', 'content'}} messages")
    if not isinstance(completion, str) or not completion:
        raise RecordError(f"{where}: 'completion' must be a non-empty string")
    return prompt, completion


def tokenize_example(tokenizer, prompt: list[dict[str, str]], completion: str,
                     max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and completion mask of one example, exactly as TRL's ``SFTTrainer`` prepares a
    conversational prompt/completion example: the prompt rendered with the generation prompt, the
    full conversation with the completion as the assistant turn (so the end-of-turn token is
    trained), the completion starting where the two token sequences diverge. Cut to
    ``max_length`` from the end (TRL's ``keep_start``)."""
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    ids = _chat_ids(tokenizer, prompt + [{"role": "assistant", "content": completion}])
    n = 0
    for a, b in zip(prompt_ids, ids, strict=False):
        if a != b:
            break
        n += 1
    mask = [0] * n + [1] * (len(ids) - n)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "completion_mask": mask}


def _chat_ids(tokenizer, messages: list[dict[str, str]], **kw: Any) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)
    return list(out["input_ids"])


def tokenize_records(tokenizer, records: Sequence[dict[str, Any]], max_length: int | None) -> list[dict[str, Any]]:
    """Tokenize training records; examples whose completion was cut away entirely are dropped
    (they carry no loss), as TRL does."""
    pairs = [to_conversational(rec, i) for i, rec in enumerate(records)]  # all checked before any work
    out = []
    for prompt, completion in pairs:
        ex = tokenize_example(tokenizer, prompt, completion, max_length)
        if any(ex["completion_mask"]):
            out.append(ex)
    return out


# --------------------------------------------------------------------------------------------
# padding-free attention on CPU

VARLEN_SDPA = "cotshape_varlen_sdpa"


def _varlen_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                         is_causal=None, **kwargs):
    """sdpa over a padding-free row, one causal call per example (the flash-style varlen path).

    Plain sdpa is correct on a padding-free row (transformers builds a block-diagonal mask from
    the position ids) but computes the full (tokens x tokens) masked attention: ~5x the padded
    cost on CPU. Cutting the row at TRL's ``cu_seq_lens_q`` and calling sdpa with
    ``is_causal=True`` per example uses the fused causal kernel on exactly the real tokens. Any
    other call (padded batches, generation with a cache) is plain sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    import torch

    rest = {k: v for k, v in kwargs.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    bounds = cu.tolist()
    outs = [
        sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None,
                               dropout=dropout, scaling=scaling, is_causal=is_causal, **rest)[0]
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
    ]
    return torch.cat(outs, dim=1), None


def use_varlen_sdpa(model) -> str | None:
    """Switch an sdpa model to :data:`VARLEN_SDPA` for padding-free training; returns the
    implementation to restore (None when the model was left alone: flash attention has its own
    varlen kernels, eager keeps the correct but dense block-diagonal mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    current = model.config._attn_implementation
    if current != "sdpa":
        return None
    AttentionInterface.register(VARLEN_SDPA, _varlen_sdpa_forward)
    # the mask for the fallback (padded) calls; ignored on padding-free rows
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, sdpa_mask)
    model.set_attn_implementation(VARLEN_SDPA)
    return current


# --------------------------------------------------------------------------------------------
# the loss head on CPU

#: label positions scored together; above this the chunks are recomputed in backward
#: (activation checkpointing), so memory stays at one chunk of (positions x vocabulary) logits
LABEL_HEAD_CHUNK = 2048


def use_cpu_label_head(model) -> bool:
    """Replace TRL's fused LM head by one suited to the CPU, on ``model`` (the model TRL patched
    with ``add_fused_lm_head``; the base model under a peft wrapper). Returns whether it did.

    TRL's ``SFTTrainer`` computes the loss with a chunked log-prob kernel (``fused_lm_head=True``).
    Off CUDA/XPU that kernel runs as Python tiles in fp32 and scores every position, prompt tokens
    included: measured, half of a full fine-tuning step of SmolLM2-135M on 2 cores. Here, on a CPU
    tensor, only the positions with a label are projected (``hidden[mask]``), through the LM head
    under the active autocast (bf16 matmul, as the model's own forward does), with an fp32 log-softmax
    over the vocabulary; above :data:`LABEL_HEAD_CHUNK` positions the chunks are recomputed in
    backward. The output is TRL's own ``FusedCausalLMOutput`` (log-probs, entropy, top-1 hits, label
    mask, loss), so TRL's loss and metrics bookkeeping is untouched. GPU tensors, MoE auxiliary
    losses and models that scale their logits (other than Gemma-style soft-capping) go to TRL's path.
    """
    import functools
    import types

    import torch
    from torch.utils.checkpoint import checkpoint
    from trl.trainer.utils import FusedCausalLMOutput

    trl_forward = model.forward
    text_config = model.config.get_text_config()
    if getattr(text_config, "output_router_logits", False) or any(
        getattr(text_config, key, None) is not None
        for key in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    ):
        return False
    softcap = getattr(text_config, "final_logit_softcapping", None)

    def score(hidden, weight, labels):
        """log p(label), entropy and top-1 hit of each position (fp32)."""
        logits = torch.nn.functional.linear(hidden, weight).float()
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
        logp = torch.log_softmax(logits, dim=-1)
        lp = logp.gather(1, labels[:, None]).squeeze(1)
        with torch.no_grad():
            entropy = -(logp.exp() * logp).sum(-1)
            top1 = logits.argmax(-1) == labels
        return lp, entropy, top1

    @functools.wraps(type(model).forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kwargs):
        head = self.get_output_embeddings()
        if not fused_lm_head or head.weight.device.type != "cpu" or getattr(head, "bias", None) is not None:
            return trl_forward(*args, fused_lm_head=fused_lm_head, labels=labels, shift_labels=shift_labels,
                               num_items_in_batch=num_items_in_batch, **kwargs)
        kwargs["use_cache"] = False
        hidden = self.base_model(*args, **kwargs).last_hidden_state
        if shift_labels is None:
            hidden, labels = hidden[:, :-1], labels[:, 1:]
        else:
            labels = shift_labels
        # the backbone can end on another device than the head (device_map); the head decides
        hidden, labels = hidden.to(head.weight.device), labels.to(head.weight.device)
        mask = labels != -100
        h, y = hidden[mask], labels[mask]
        parts = []
        for a in range(0, max(len(y), 1), LABEL_HEAD_CHUNK):
            hc, yc = h[a:a + LABEL_HEAD_CHUNK], y[a:a + LABEL_HEAD_CHUNK]
            if len(y) > LABEL_HEAD_CHUNK and torch.is_grad_enabled():
                parts.append(checkpoint(score, hc, head.weight, yc, use_reentrant=False))
            else:
                parts.append(score(hc, head.weight, yc))
        lp, entropy, top1 = (torch.cat(x) for x in zip(*parts, strict=True))

        def full(x):  # back to the (batch, seq - 1) shape TRL expects, zero off the labels
            return x.new_zeros(mask.shape).masked_scatter(mask, x)

        log_probs = full(lp)
        loss = -log_probs.sum() / (mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch)
        return FusedCausalLMOutput(loss=loss, log_probs=log_probs, entropy=full(entropy), is_top1=full(top1),
                                   label_mask=mask)

    model.forward = types.MethodType(forward, model)
    return True


# --------------------------------------------------------------------------------------------
# config


def build_sft_config(params: SFTParams, out_dir: str | os.PathLike):
    """The ``trl.SFTConfig`` for ``params``; every setting that matters is set explicitly."""
    import torch
    from trl import SFTConfig

    dtype = resolve_dtype(params.dtype)
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
        # TRL defaults bf16=True; bf16 here is autocast over fp32 master weights
        bf16=dtype == "bfloat16",
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
        report_to="none",  # MLflow is fed by cotshape.tracking's callback
        seed=params.seed,
        data_seed=params.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def launch_command(params: SFTParams, script_args: list[str],
                   accelerate_config_dir: str = "configs/accelerate") -> list[str]:
    """How a stage runs a training script: plain python, or ``accelerate launch`` with the
    launcher's config file (configs/accelerate/<launcher>.yaml)."""
    if params.launcher == "none":
        return [sys.executable, *script_args]
    return [
        "accelerate", "launch",
        "--config_file", f"{accelerate_config_dir}/{params.launcher}.yaml",
        "--num_processes", str(params.num_processes),
        "--num_machines", str(params.num_machines),
        *script_args,
    ]


# --------------------------------------------------------------------------------------------
# training


def _loss_recorder():
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        """Keeps every training log entry (loss per step) for train_log.json."""

        def __init__(self) -> None:
            self.entries: list[dict[str, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                entry = {"step": int(state.global_step)}
                for key in ("loss", "learning_rate", "grad_norm", "num_tokens", "epoch"):
                    if key in logs:
                        entry[key] = float(logs[key])
                self.entries.append(entry)

    return LossRecorder()


def train_sft(model_path: str | os.PathLike, records: list[dict[str, Any]], out_dir: str | os.PathLike,
              params: SFTParams, seed: int | None = None, callbacks: Iterable = (),
              tracker=None) -> dict[str, Any]:
    """Fine-tune ``model_path`` on ``records`` (``prompt`` messages + ``completion`` text), loss
    on the completion only, and save the result to ``out_dir`` (replaced atomically).

    ``tracker`` is an active run from :meth:`cotshape.tracking.Tracker.run` (or anything with a
    ``callback()`` returning a ``TrainerCallback``): the step-wise loss goes to it.

    The folder holds the tokenizer, ``train_log.json`` and ``cotshape_sft.json``, and either the
    full model (method=full) or the LoRA adapter (method=lora; :func:`load_trained` merges it
    onto the base model recorded in the marker). Returns ``train_loss`` (mean over the run),
    ``first_loss``, ``final_loss``, ``steps``, ``train_tokens`` (real tokens processed, prompts
    included, no padding), ``tokens_per_second`` and ``examples``.
    """
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTTrainer

    if seed is not None:
        params = replace(params, seed=seed)
    if not records:
        raise ValueError("train_sft: the training set is empty (0 records); nothing to train on")
    out_dir = Path(out_dir)
    model_path = str(model_path)

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    examples = tokenize_records(tokenizer, records, params.max_length)
    if not examples:
        raise ValueError(
            f"train_sft: all {len(records)} records lose their whole completion at "
            f"sft.max_length={params.max_length}; raise sft.max_length"
        )
    dataset = Dataset.from_list(examples)

    # A fixed, deterministic temp folder (not mkdtemp): under accelerate every process must agree
    # on where trainer.save_model writes.
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp"
    config = build_sft_config(params, tmp_dir / "trainer")
    # fp32 weights: with bf16 autocast the optimizer keeps fp32 master weights
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    restore_attn = use_varlen_sdpa(model) if params.padding_free else None

    peft_config = None
    if params.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
            target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM", bias="none",
        )

    recorder = _loss_recorder()
    cbs = [recorder, *callbacks]
    if tracker is not None:
        cbs.append(tracker.callback())
    main = PartialState().is_main_process
    if main and tmp_dir.exists():
        shutil.rmtree(tmp_dir)  # left by a killed run
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=cbs)
    use_cpu_label_head(model)  # TRL patched this same object (the base model under peft)
    main = trainer.is_world_process_zero()

    start = time.perf_counter()
    result = trainer.train()
    train_time = time.perf_counter() - start
    # TRL counts the real (unpadded) tokens of every batch, across processes
    train_tokens = int(getattr(trainer, "_total_train_tokens", 0)) or sum(
        len(e["input_ids"]) for e in examples) * int(trainer.state.num_train_epochs)

    losses = [e["loss"] for e in recorder.entries]
    metrics = {
        "train_loss": float(result.training_loss),
        "first_loss": losses[0] if losses else float("nan"),
        "final_loss": losses[-1] if losses else float("nan"),
        "steps": int(trainer.state.global_step),
        "train_tokens": train_tokens,
        "tokens_per_second": train_tokens / train_time if train_time > 0 else 0.0,
        "examples": len(examples),
    }

    if restore_attn is not None:  # the saved config must not name an attention only we register
        model.set_attn_implementation(restore_attn)  # the base model, under any peft wrapper
    # save_model runs on every process (FSDP/DeepSpeed gather there); only the main one writes
    trainer.save_model(str(tmp_dir))
    trainer.accelerator.wait_for_everyone()
    if main:
        tokenizer.save_pretrained(tmp_dir)
        shutil.rmtree(tmp_dir / "trainer", ignore_errors=True)
        for leftover in ("training_args.bin", "README.md"):
            (tmp_dir / leftover).unlink(missing_ok=True)
        log = {
            **metrics,
            "train_time_s": train_time,
            "dtype": resolve_dtype(params.dtype),
            "records": len(records),
            "dropped_by_max_length": len(records) - len(examples),
            "params": asdict(params),
            "log": recorder.entries,
        }
        (tmp_dir / TRAIN_LOG).write_text(json.dumps(log, indent=2) + "\n", encoding="utf-8")
        marker = {"method": params.method, "base_model": model_path, "merged": params.method == "full"}
        (tmp_dir / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp_dir, out_dir)
    trainer.accelerator.wait_for_everyone()
    return metrics


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` with at most an instant without it."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def load_trained(out_dir: str | os.PathLike, device: str = "cpu", dtype: str = "float32",
                 base_model: str | os.PathLike | None = None):
    """The model in a train_sft folder, ready for generation/evaluation (eval mode, on
    ``device``, in ``dtype``). A LoRA adapter is applied to its base model (``base_model``, or
    the one recorded at training time) and merged, so callers get a plain transformers model.
    The tokenizer is in the same folder: ``AutoTokenizer.from_pretrained(out_dir)``."""
    import torch
    from transformers import AutoModelForCausalLM

    out_dir = Path(out_dir)
    marker_path = out_dir / MARKER
    if not marker_path.exists():
        raise FileNotFoundError(f"{marker_path}: not a cotshape SFT checkpoint (no {MARKER})")
    marker = json.loads(marker_path.read_text(encoding="utf-8"))
    torch_dtype = getattr(torch, resolve_dtype(dtype))
    if marker["method"] == "full":
        model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch_dtype)
    else:
        from peft import PeftModel

        base = str(base_model or marker["base_model"])
        if not Path(base).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(f"{marker_path}: base model {base!r} not found (pass base_model=...)")
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)
        model = PeftModel.from_pretrained(model, out_dir).merge_and_unload()
    return model.to(device).eval()
