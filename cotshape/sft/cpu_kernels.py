"""CPU kernels of SFT that change no result: padding-free attention one example at a time
(:func:`use_varlen_sdpa`), the loss head that projects only the labelled positions
(:func:`use_cpu_label_head`), LoRA's frozen weights and input casts under bf16 autocast, and glibc's
allocator kept from returning memory (:func:`cotshape.core.allocator.reuse_freed_memory`, re-exported
here). Tests check each against the stock path."""

from __future__ import annotations

from cotshape.core.allocator import reuse_freed_memory  # noqa: F401  (re-exported: train.py, tests)

# --------------------------------------------------------------------------------------------
# padding-free attention on CPU

VARLEN_SDPA = "cotshape_varlen_sdpa"


#: examples up to this many tokens take :func:`causal_attention_math` (two batched matrix
#: products and an fp32 softmax: ~2x faster forward + backward than the CPU flash kernel at
#: GSM8K lengths, measured in bf16 on 2 cores); longer ones take sdpa's flash kernel, whose memory
#: does not grow with the square of the length (the math path keeps heads x L x L probabilities
#: per layer for backward)
VARLEN_MATH_MAX = 512


def causal_attention_math(query, key, value, scaling):
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
    computes exactly the real tokens: on CPU :func:`causal_attention_math` up to
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
        causal_attention_math(query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], scale)
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


def _scores(logits, labels, probs):
    """``log p(label)``, entropy, top-1 hit of each row of fp32 ``logits`` [N, V], writing the
    probabilities into ``probs`` (a fresh tensor when None) with one pass of ``exp`` over the
    vocabulary (``log_softmax`` followed by ``exp`` for the entropy makes two: on 2 cores each is
    ~0.2 s of a SmolLM2-135M step). Returns ``(label_logp, entropy, top1, probs)``."""
    import torch

    top, top_index = logits.max(dim=-1, keepdim=True)
    probs = torch.sub(logits, top, out=probs) if probs is not None else logits - top
    probs.exp_()
    total = probs.sum(dim=-1, keepdim=True)
    probs.div_(total)
    log_z = (top + total.log()).squeeze(1)
    label_logp = logits.gather(1, labels[:, None]).squeeze(1) - log_z
    # H = -sum p log p = log Z - sum p * logits (a float32 product: not autocast's bf16)
    with torch.autocast(logits.device.type, enabled=False):
        entropy = log_z - torch.bmm(probs[:, None, :], logits[:, :, None]).view(-1)
    return label_logp, entropy, top_index.squeeze(1) == labels, probs


def _logits_grad(probs, labels, grad_logp, out):
    """``d log p(label) / d logits = g * (onehot(label) - p)`` (into ``out`` when given)."""
    import torch

    neg = grad_logp.neg()[:, None]
    grad = torch.mul(probs, neg, out=out) if out is not None else probs * neg
    return grad.scatter_add_(1, labels[:, None], grad_logp[:, None])


class HeadBuffers:
    """Memory the loss head reuses for its (positions x vocabulary) tensors, step after step.

    Each step scores a different number of positions, so glibc (even with
    :func:`reuse_freed_memory`) often serves the new logits from fresh pages, and a page fault on
    these VMs costs ~1.7 ms/MB: measured in a Gemma-3-270M LoRA step (400 positions x 262,144),
    ``logits - max`` took 0.35-0.74 s on fresh memory and 0.03 s on memory written before. A
    buffer here grows to the largest chunk seen (rounded up to :data:`ROWS` rows) and is only
    ever rewritten. A backward that finds a later forward ran first (its saved probabilities
    overwritten in place) raises autograd's in-place error instead of giving wrong gradients."""

    ROWS = 256

    def __init__(self) -> None:
        self._buffers: dict = {}

    def take(self, name: str, rows: int, cols: int, dtype):
        import torch

        buf = self._buffers.get(name)
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.dtype != dtype:
            self._buffers.pop(name, None)  # free the old one first: peak memory stays one buffer
            capacity = -(-max(rows, 1) // self.ROWS) * self.ROWS
            buf = self._buffers[name] = torch.empty(capacity, cols, dtype=dtype)
        return buf[:rows]


def _label_head_function():
    import torch

    class LabelScores(torch.autograd.Function):
        """:func:`_scores` of fp32 ``logits`` that autograd computed (the soft-capped path). Only
        ``log p(label)`` has a gradient, from the probabilities kept for backward (as
        ``log_softmax`` keeps its output)."""

        @staticmethod
        def forward(ctx, logits, labels):
            label_logp, entropy, top1, probs = _scores(logits, labels, None)
            ctx.save_for_backward(probs, labels)
            ctx.mark_non_differentiable(entropy, top1)
            return label_logp, entropy, top1

        @staticmethod
        def backward(ctx, grad_logp, _grad_entropy, _grad_top1):
            probs, labels = ctx.saved_tensors
            return _logits_grad(probs, labels, grad_logp, None), None

    class LabelHead(torch.autograd.Function):
        """The head's product and :func:`_scores` in one function, its (positions x vocabulary)
        tensors in :class:`HeadBuffers`: ``hidden`` [N, D] x ``weight`` [V, D] in the autocast
        dtype (as ``F.linear`` under autocast: the same ``mm`` kernel, the same bits), fp32
        scores. Backward: ``d hidden = grad_logits @ weight`` and, when the weight trains,
        ``d weight = hidden^T @ grad_logits``, as autograd's ``mm`` backward computes them."""

        @staticmethod
        def forward(ctx, hidden, weight, labels, buffers):
            device = hidden.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
            rows, vocab = hidden.shape[0], weight.shape[0]
            with torch.autocast(device, enabled=False):
                h, w = hidden.to(dtype), weight.to(dtype)
                product = torch.mm(h, w.t(), out=buffers.take("product", rows, vocab, dtype))
                logits = product if dtype == torch.float32 else \
                    buffers.take("logits", rows, vocab, torch.float32).copy_(product)
                label_logp, entropy, top1, probs = _scores(
                    logits, labels, buffers.take("probs", rows, vocab, torch.float32))
            ctx.buffers, ctx.dtypes = buffers, (hidden.dtype, weight.dtype)
            ctx.save_for_backward(h, w, labels, probs)
            ctx.mark_non_differentiable(entropy, top1)
            return label_logp, entropy, top1

        @staticmethod
        def backward(ctx, grad_logp, _grad_entropy, _grad_top1):
            buffers = ctx.buffers
            h, w, labels, probs = ctx.saved_tensors  # autograd checks probs was not rewritten since
            rows, vocab = probs.shape
            grad = _logits_grad(probs, labels, grad_logp, buffers.take("logits", rows, vocab, torch.float32))
            if w.dtype != torch.float32:
                grad = buffers.take("product", rows, vocab, w.dtype).copy_(grad)
            hidden_dtype, weight_dtype = ctx.dtypes
            grad_hidden = torch.mm(grad, w).to(hidden_dtype) if ctx.needs_input_grad[0] else None
            grad_weight = torch.mm(h.t(), grad).t().to(weight_dtype) if ctx.needs_input_grad[1] else None
            return grad_hidden, grad_weight, None, None

    return LabelScores, LabelHead


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

    _LabelScores, _LabelHead = _label_head_function()
    buffers = HeadBuffers()
    trl_forward = model.forward
    text_config = model.config.get_text_config()
    if getattr(text_config, "output_router_logits", False) or any(
        getattr(text_config, key, None) is not None
        for key in ("logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    ):
        return False
    softcap = getattr(text_config, "final_logit_softcapping", None)

    frozen_copy: dict = {}

    def autocast_weight(weight):
        """The head weight as autocast would multiply with it: under CPU autocast a frozen fp32
        weight (LoRA: the head is the tied embedding, which stays fp32) is cast once and the copy
        kept, instead of once per step (a [vocabulary, hidden] cast: ~0.5 s a step for Gemma-3's
        262k rows on 2 cores). The cast is the same rounding, so the product is the same bits; a
        weight that trains, or was changed in place (its version counter), is cast afresh."""
        dtype = torch.get_autocast_dtype("cpu")
        if (weight.requires_grad or not torch.is_autocast_enabled("cpu") or weight.dtype == dtype
                or weight.dtype != torch.float32):
            return weight
        key = (weight.data_ptr(), weight._version, dtype)
        if frozen_copy.get("key") != key:
            frozen_copy.clear()
            frozen_copy.update(key=key, weight=weight.detach().to(dtype))
        return frozen_copy["weight"]

    def score(hidden, weight, labels):
        """log p(label), entropy and top-1 hit of each position (fp32)."""
        if not softcap:
            return _LabelHead.apply(hidden, weight, labels, buffers)
        logits = torch.nn.functional.linear(hidden, weight).float()
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
        weight = autocast_weight(head.weight)
        parts = []
        for a in range(0, max(len(y), 1), LABEL_HEAD_CHUNK):
            hc, yc = h[a:a + LABEL_HEAD_CHUNK], y[a:a + LABEL_HEAD_CHUNK]
            if len(y) > LABEL_HEAD_CHUNK and torch.is_grad_enabled():
                parts.append(checkpoint(score, hc, weight, yc, use_reentrant=False))
            else:
                parts.append(score(hc, weight, yc))
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
