"""Supervised fine-tuning of the student on one training set (H, G, W, P, a mixture, ...).

The paper's SFT: prompt/completion pairs, loss on the completion tokens only; the prompt is the
student's chat template (``base.prompt_format: chat``) or, as the authors trained base students,
the task's plain-text template (``plain``: :func:`record_prompts`, the same text evaluation
decodes from). We use TRL's ``SFTTrainer`` (no hand-written loop) with an ``SFTConfig`` built
deliberately from the ``sft:`` params section:

* dtype: TRL defaults to ``bf16=True``; we resolve ``auto`` to bf16 autocast only where bf16 is
  fast (CUDA with bf16, or a CPU with AVX512-BF16/AMX), fp32 elsewhere. With ``precision: amp``
  master weights stay fp32; ``precision: bf16`` trains the bf16 weights themselves, as the
  authors' sft.py did (on SmolLM2-135M, a step of 1e-6 changes only 0.4% of the bf16 weights).
* intermediate checkpoints (``save_steps``) go to ``<out>/checkpoints/step-N`` in the same
  loadable layout as ``<out>`` (:func:`checkpoint_dir`, :func:`load_trained`).
* gradient checkpointing: TRL defaults to on; we set it from params (off by default: the small
  default student fits easily and checkpointing costs ~30% compute).
* padding-free batches: the examples of a batch are concatenated into one row with per-example
  position ids (TRL's collator), so no padding is computed. Flash attention has varlen kernels for
  this; plain sdpa would build a dense block-diagonal mask over the whole row (correct, but ~5x the
  attention cost on CPU), so sdpa models train with :data:`VARLEN_SDPA`, one causal attention per
  example (on CPU, two batched products and an fp32 softmax up to :data:`VARLEN_MATH_MAX` tokens,
  ~2x sdpa's CPU kernel forward + backward). Tests check both give the padded loss on a fixed batch
  (no token attends across examples).

* the loss head on CPU: TRL's fused LM-head kernel runs as fp32 Python tiles over every position
  off CUDA; :func:`use_cpu_label_head` projects only the labelled positions, in bf16 autocast
  (about 1.8x a whole full fine-tuning step on 2 cores), with one pass of ``exp`` over the
  vocabulary for log-probs and entropy. A test checks it gives TRL's outputs and gradients.
* CPU speed without changing a bit: LoRA under bf16 autocast keeps the frozen base weights in bf16
  (:func:`store_frozen_linears_in`) and hands adapters their input uncast
  (:func:`skip_lora_input_casts`); glibc keeps freed memory for reuse (:func:`reuse_freed_memory`).
  ``python bench/bench_sft.py`` measures each method against stock TRL and the bf16 ceiling.

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

from cotshape.core.artifacts import CHECKPOINTS, SFT_MARKER, SKIPPED, STEP_PREFIX, TRAIN_LOG
from cotshape.core.errors import RecordError
from cotshape.sft.params import SFTParams

#: Written in every checkpoint folder; says how to load it (see :func:`load_trained`).
MARKER = SFT_MARKER

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


def tokenize_example(tokenizer, prompt: list[dict[str, str]] | str, completion: str,
                     max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and completion mask of one example, exactly as TRL's ``SFTTrainer`` prepares a
    conversational prompt/completion example: the prompt rendered with the generation prompt, the
    full conversation with the completion as the assistant turn (so the end-of-turn token is
    trained), the completion starting where the two token sequences diverge. Cut to
    ``max_length`` from the end (TRL's ``keep_start``).

    A text ``prompt`` (``base.prompt_format: plain``, the text of
    :func:`cotshape.tasks.base.student_prompt`) is tokenized as it is (no special tokens added:
    it carries its own BOS), exactly the ids evaluation decodes from; the completion is
    :data:`~cotshape.tasks.base.PLAIN_SEPARATOR` + completion + EOS (TRL appends EOS to a
    non-conversational completion), tokenized on its own so that no token merges across the
    boundary and the trained context is the evaluated one."""
    if isinstance(prompt, str):
        from cotshape.tasks.base import PLAIN_SEPARATOR

        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        text = completion if completion.startswith(("\n", " ")) else PLAIN_SEPARATOR + completion
        completion_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion_ids = [*completion_ids, tokenizer.eos_token_id]
        ids, mask = list(prompt_ids) + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)
        if max_length is not None:
            ids, mask = ids[:max_length], mask[:max_length]
        return {"input_ids": ids, "completion_mask": mask}
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
    if getattr(tokenizer, "chat_template", None) is None:
        from cotshape.core.errors import InputError
        from cotshape.generation.base import NO_CHAT_TEMPLATE

        raise InputError(NO_CHAT_TEMPLATE)
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)
    return list(out["input_ids"])


def record_prompts(tokenizer, records: Sequence[dict[str, Any]], prompt_format: str = "chat", task=None,
                   problems: dict[str, Any] | None = None) -> list[str] | None:
    """The student prompt text of each training record under ``base.prompt_format``: None for
    ``chat`` (the record's own messages are rendered with the chat template), for ``plain``
    :func:`cotshape.tasks.base.student_prompt` of the record's problem (``problem_id`` looked up
    in ``problems``, the prepared training problems: a record does not hold its problem)."""
    from cotshape.tasks.base import check_prompt_format, student_prompt

    if check_prompt_format(prompt_format) == "chat":
        return None
    if task is None or problems is None:
        raise ValueError("base.prompt_format: plain needs the task and its problems (stage option --problems)")
    out = []
    for i, rec in enumerate(records):
        pid = rec.get("problem_id") if isinstance(rec, dict) else None
        if pid not in problems:
            raise RecordError(f"record {i}: problem_id {pid!r} is not among the task's prepared problems")
        out.append(student_prompt(task, problems[pid], "plain", tokenizer))
    return out


def prompt_format_kwargs(prompt_format: str, task_name: str, problems_path: str | os.PathLike | None) -> dict[str, Any]:
    """The ``prompt_format``/``task``/``problems`` keywords of :func:`train_sft` and
    :func:`cotshape.sft.closeness.completion_loss` for a stage: ``plain`` needs the prepared problems
    file (stage option ``--problems``), ``chat`` nothing more."""
    from cotshape.tasks.base import check_prompt_format

    if check_prompt_format(prompt_format) == "chat":
        return {"prompt_format": "chat"}
    if not problems_path:
        from cotshape.core.errors import InputError

        raise InputError("base.prompt_format: plain builds each student prompt from the record's problem: "
                         "pass the task's prepared problems with --problems (dvc.yaml)")
    from cotshape.core.records import read_problems
    from cotshape.tasks import get_task

    return {"prompt_format": "plain", "task": get_task(task_name),
            "problems": {x["id"]: x for x in read_problems(problems_path)}}


def tokenize_records(tokenizer, records: Sequence[dict[str, Any]], max_length: int | None,
                     prompts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Tokenize training records; examples whose completion was cut away entirely are dropped
    (they carry no loss), as TRL does. ``prompts`` (:func:`record_prompts` with ``plain``)
    replaces each record's chat messages by its plain prompt text."""
    pairs = [to_conversational(rec, i) for i, rec in enumerate(records)]  # all checked before any work
    if prompts is not None:
        if len(prompts) != len(pairs):
            raise ValueError(f"tokenize_records: {len(prompts)} prompts for {len(pairs)} records")
        pairs = [(text, completion) for text, (_, completion) in zip(prompts, pairs, strict=True)]
    out = []
    for prompt, completion in pairs:
        ex = tokenize_example(tokenizer, prompt, completion, max_length)
        if any(ex["completion_mask"]):
            out.append(ex)
    return out


# --------------------------------------------------------------------------------------------
# padding-free attention on CPU

VARLEN_SDPA = "cotshape_varlen_sdpa"


#: examples up to this many tokens take :func:`_causal_attention_math` (two batched matrix
#: products and an fp32 softmax: ~2x faster forward + backward than the CPU flash kernel at
#: GSM8K lengths, measured in bf16 on 2 cores); longer ones take sdpa's flash kernel, whose memory
#: does not grow with the square of the length (the math path keeps heads x L x L probabilities
#: per layer for backward)
VARLEN_MATH_MAX = 512


def _causal_attention_math(query, key, value, scaling):
    """Causal attention of one example: ``query`` [1, H, L, D], ``key``/``value`` [1, KV, L, D]
    (grouped-query heads: query head h reads key/value head h // (H // KV), as ``repeat_kv``).
    Scores in the autocast dtype (one ``baddbmm`` per key/value head with the causal mask as an
    additive bias), softmax in float32. Returns [1, L, H, D], as ``sdpa_attention_forward``."""
    import torch

    _, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    q = query[0].reshape(kv_heads, groups * length, dim)  # the query heads of one kv head, stacked
    bias = torch.full((length, length), float("-inf"), dtype=query.dtype, device=query.device).triu_(1)
    scores = torch.baddbmm(bias.repeat(groups, 1), q, key[0].transpose(1, 2), alpha=scaling)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    out = torch.bmm(probs.to(value.dtype), value[0])  # (kv_heads, groups * length, dim)
    return out.view(heads, length, dim).transpose(0, 1)[None]


def _varlen_sdpa_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                         is_causal=None, **kwargs):
    """Attention over a padding-free row, one causal call per example (the flash-style varlen path).

    Plain sdpa is correct on a padding-free row (transformers builds a block-diagonal mask from
    the position ids) but computes the full (tokens x tokens) masked attention: ~5x the padded
    cost on CPU. Cutting the row at TRL's ``cu_seq_lens_q`` and attending causally per example
    computes exactly the real tokens: on CPU :func:`_causal_attention_math` up to
    :data:`VARLEN_MATH_MAX` tokens (without dropout), else sdpa with ``is_causal=True``. Any other call (padded batches,
    generation with a cache) is plain sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None or query.shape[0] != 1 or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    import torch

    rest = {k: v for k, v in kwargs.items() if not k.startswith(("cu_seq_lens", "max_length"))}
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    math_path = query.device.type == "cpu" and not dropout  # GPUs have fused kernels for both
    bounds = cu.tolist()
    outs = [
        _causal_attention_math(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scale)
        if math_path and b - a <= VARLEN_MATH_MAX else
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


def _label_scores_function():
    import torch

    class LabelScores(torch.autograd.Function):
        """``log p(label)``, entropy and top-1 hit of each row of fp32 ``logits`` [N, V] from one
        pass of ``exp`` over the vocabulary (``log_softmax`` followed by ``exp`` for the entropy
        makes two: on 2 cores each is ~0.2 s of a SmolLM2-135M step). Only ``log p(label)`` has a
        gradient: ``d/dlogits = g * (onehot(label) - p)``, from the probabilities kept for backward
        (as ``log_softmax`` keeps its output)."""

        @staticmethod
        def forward(ctx, logits, labels):
            top, top_index = logits.max(dim=-1, keepdim=True)
            probs = (logits - top).exp_()
            total = probs.sum(dim=-1, keepdim=True)
            probs.div_(total)
            log_z = (top + total.log()).squeeze(1)
            label_logp = logits.gather(1, labels[:, None]).squeeze(1) - log_z
            # H = -sum p log p = log Z - sum p * logits (a float32 product: not autocast's bf16)
            with torch.autocast(logits.device.type, enabled=False):
                entropy = log_z - torch.bmm(probs[:, None, :], logits[:, :, None]).view(-1)
            top1 = top_index.squeeze(1) == labels
            ctx.save_for_backward(probs, labels)
            ctx.mark_non_differentiable(entropy, top1)
            return label_logp, entropy, top1

        @staticmethod
        def backward(ctx, grad_logp, _grad_entropy, _grad_top1):
            probs, labels = ctx.saved_tensors
            grad = probs * grad_logp.neg()[:, None]
            grad.scatter_add_(1, labels[:, None], grad_logp[:, None])
            return grad, None

    return LabelScores


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

    _LabelScores = _label_scores_function()
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
        return _LabelScores.apply(logits, labels)

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
# frozen weights under autocast


def skip_lora_input_casts(model) -> int:
    """Under bf16 autocast, let each LoRA layer hand its input to the adapter as it comes (peft
    casts it to the adapter's fp32 first, then autocast casts it back to bf16 for the product: two
    copies of every input, the MLP's included, for the same bf16 values; gradients are the same
    bits too, a test checks). Returns how many layers were switched."""
    count = 0
    for module in model.modules():
        if getattr(module, "cast_input_dtype_enabled", None) is True:
            module.cast_input_dtype_enabled = False
            count += 1
    return count


def reuse_freed_memory() -> bool:
    """Make glibc serve large allocations from the heap and keep freed memory for reuse (no
    ``mmap``/``munmap`` per tensor, no trimming), as ``MALLOC_MMAP_MAX_=0`` would from the start.
    A training step allocates and frees the same large activations every step; by default each
    one is a fresh mapping whose pages fault in on first touch. Measured on bench_sft (2 cores):
    full fine-tuning +17 % tokens/s, LoRA +9 %. Returns False where it does not apply (not glibc).
    The process keeps its peak memory until it exits (a training process exits after training)."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_top_pad, m_mmap_max = -1, -2, -4  # glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0) and mallopt(m_trim_threshold, 2**31 - 1) and mallopt(m_top_pad, 1 << 28))


def store_frozen_linears_in(model, dtype) -> int:
    """Store the frozen ``nn.Linear`` weights (and biases) of ``model`` in ``dtype``, the autocast
    dtype it trains under (LoRA with ``precision: amp``: the base model is frozen). Autocast casts
    an fp32 weight to bf16 on every forward; the cast is a deterministic rounding, so casting once
    gives bit-identical products (a test checks the outputs and adapter gradients) and saves the
    cast and half the weights' memory. A weight shared with another module (a tied LM head and
    embedding) is left alone: the embedding output must stay fp32. Returns how many were cast."""
    import torch

    shared = {id(p) for m in model.modules() if not isinstance(m, torch.nn.Linear)
              for p in m.parameters(recurse=False)}
    count = 0
    for module in model.modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        params = [p for p in (module.weight, module.bias) if p is not None]
        if any(p.requires_grad or id(p) in shared or not p.is_floating_point() for p in params):
            continue
        for p in params:
            p.data = p.data.to(dtype)
        count += 1
    return count


# --------------------------------------------------------------------------------------------
# config


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


def checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    """Where train_sft saves the checkpoint of optimizer step ``step`` (``sft.save_steps``):
    ``<out>/checkpoints/step-<step>``, inside the SFT output folder (so the stage's out holds it)."""
    return Path(out_dir) / CHECKPOINTS / f"{STEP_PREFIX}{int(step)}"


def _save_folder(trainer, folder: Path, tokenizer, marker: dict[str, Any], model, restore_attn: str | None,
                 main: bool, card_name: str | None = None, files: dict[str, str] | None = None) -> None:
    """Save the trainer's model to ``folder`` in the loadable layout of :func:`load_trained`:
    weights (full) or adapter (LoRA), tokenizer, ``files`` (name -> text) and :data:`MARKER`.
    ``card_name``: TRL's model card (trainer, framework versions, citation; no dates or paths, so
    the DVC out stays reproducible) as ``README.md`` under that model name, in place of PEFT's
    template card; without it (a checkpoint) no card. Runs on every process (FSDP/DeepSpeed
    gather the weights there); only the main one writes."""
    if restore_attn is not None:  # the saved config must not name an attention only we register
        model.set_attn_implementation(restore_attn)  # the base model, under any peft wrapper
    trainer.save_model(str(folder))
    trainer.accelerator.wait_for_everyone()
    if main:
        tokenizer.save_pretrained(folder)
        (folder / "README.md").unlink(missing_ok=True)  # PEFT's template card
        if card_name is not None:  # from_pretrained ignores README.md
            os.makedirs(trainer.args.output_dir, exist_ok=True)  # may be folder/trainer: removed below
            trainer.create_model_card(model_name=card_name)
            os.replace(Path(trainer.args.output_dir) / "README.md", folder / "README.md")
        shutil.rmtree(folder / "trainer", ignore_errors=True)
        (folder / "training_args.bin").unlink(missing_ok=True)
        for name, text in (files or {}).items():
            (folder / name).write_text(text, encoding="utf-8")
        (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def _checkpoint_saver(steps: Sequence[int], root: Path, save, main: bool):
    """A callback that calls ``save(folder, step)`` after each optimizer step in ``steps`` (the
    folder: :func:`checkpoint_dir` under ``root``). A step the run never reaches (a small set:
    MBPP's 374 problems at 64 per step make 6 steps an epoch) gets a folder with only the
    pipeline's ``SKIPPED.json``, the way an empty training set is recorded, so that its evaluate
    stage writes "not evaluated" instead of failing; its ``.not_reached`` lists them."""
    from transformers import TrainerCallback

    class CheckpointSaver(TrainerCallback):
        def __init__(self) -> None:
            self.steps = sorted(set(int(s) for s in steps))
            self.saved: list[int] = []
            self.not_reached: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            step = int(state.global_step)
            if step in self.steps and step not in self.saved:
                save(checkpoint_dir(root, step), step)
                self.saved.append(step)

        def on_train_end(self, args, state, control, **kwargs):

            self.not_reached = [s for s in self.steps if s not in self.saved]
            for step in self.not_reached if main else ():
                folder = checkpoint_dir(root, step)
                folder.mkdir(parents=True, exist_ok=True)
                reason = f"the run ended after {state.global_step} optimizer steps, before step {step} (sft.save_steps)"
                (folder / SKIPPED).write_text(json.dumps({"reason": reason}) + "\n", encoding="utf-8")
            if self.not_reached and main:
                print(f"sft.save_steps: {self.not_reached} not reached (the run has {state.global_step} steps)",
                      file=sys.stderr)

    return CheckpointSaver()


def train_sft(model_path: str | os.PathLike, records: list[dict[str, Any]], out_dir: str | os.PathLike,
              params: SFTParams, seed: int | None = None, callbacks: Iterable = (),
              tracker=None, prompt_format: str = "chat", task=None,
              problems: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune ``model_path`` on ``records`` (``prompt`` messages + ``completion`` text), loss
    on the completion only, and save the result to ``out_dir`` (replaced atomically).

    ``prompt_format`` (``base.prompt_format``): ``chat`` trains on the record's messages in the
    chat template; ``plain`` on the task's plain-text prompt of the record's problem (``task``
    and ``problems``, id -> problem, are then required; :func:`record_prompts`).

    ``tracker`` is an active run from :meth:`cotshape.tracking.tracker.Tracker.run` (or anything with a
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
    examples = tokenize_records(tokenizer, records, params.max_length,
                                record_prompts(tokenizer, records, prompt_format, task, problems))
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
    # precision amp: fp32 weights, so under bf16 autocast the optimizer keeps fp32 master weights;
    # precision bf16: bf16 weights and optimizer states (an update below half a bf16 step is lost)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if params.precision == "bf16" else torch.float32)
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
    # one process only: FSDP flattens parameters and wants one dtype per flat parameter
    if params.method == "lora" and config.bf16 and params.precision == "amp" and trainer.accelerator.num_processes == 1:
        store_frozen_linears_in(trainer.model, torch.bfloat16)  # what autocast multiplies with anyway
        skip_lora_input_casts(trainer.model)
    if not torch.cuda.is_available():
        reuse_freed_memory()
    main = trainer.is_world_process_zero()

    def save_checkpoint(folder: Path, step: int) -> None:  # sft.save_steps, inside the out folder
        marker = {"method": params.method, "base_model": model_path, "merged": params.method == "full", "step": step}
        _save_folder(trainer, folder, tokenizer, marker, model, restore_attn, main)
        if restore_attn is not None:  # back to the padding-free kernel for the rest of the run
            model.set_attn_implementation(VARLEN_SDPA)

    saver = _checkpoint_saver(params.save_steps, tmp_dir, save_checkpoint, main)
    trainer.add_callback(saver)

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

    log = {
        **metrics,
        "train_time_s": train_time,
        "dtype": training_dtype(params.dtype),
        "precision": params.precision,
        "checkpoints": [f"{CHECKPOINTS}/{STEP_PREFIX}{n}" for n in saver.saved],
        "checkpoints_not_reached": saver.not_reached,
        "records": len(records),
        "dropped_by_max_length": len(records) - len(examples),
        "params": asdict(params),
        "log": recorder.entries,
    }
    marker = {"method": params.method, "base_model": model_path, "merged": params.method == "full"}
    _save_folder(trainer, tmp_dir, tokenizer, marker, model, restore_attn, main, card_name=out_dir.name,
                 files={TRAIN_LOG: json.dumps(log, indent=2) + "\n"})
    if main:
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
    torch_dtype = getattr(torch, training_dtype(dtype))
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
