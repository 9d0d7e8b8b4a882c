"""The ``transformers`` generation backend: continuous batching on the stock HF model forward.

Why not ``model.generate``: with sampling, rows of a batch finish at very different lengths,
and ``generate`` keeps every finished row in the batch (padding) until the longest one ends; on
2 CPU cores that wastes most of the compute. This backend runs its own decode loop instead:

* every (prompt, sample) pair is one *row*; up to ``batch_size`` rows decode together, one token
  per step, through the model's ordinary ``forward`` with a ``DynamicCache``;
* a row that emits EOS, completes a stop string or reaches ``max_new_tokens`` leaves the batch
  at once (the last rows move into its cache slot), and waiting rows are prefilled and merged
  in, so the batch stays full until the queue runs dry (continuous batching);
* the KV cache of each layer is one preallocated contiguous buffer; decode steps attend over the
  whole buffer with the unfilled tail masked (a strided view would be copied inside every bf16
  matmul);
* top-p sampling looks at the 64 most likely tokens (``topk``) and sorts the whole vocabulary
  only for the rare rows whose nucleus is larger (a full sort per step cost 25 % of the time);
* rows are kept left-padded: the merged cache is padded on the left to a common length, the 2-D
  attention mask marks the padding, ``position_ids`` are given explicitly per row, and columns
  that are padding in every row are trimmed away;
* the ``n`` samples of a prompt share one prefill (the prompt's cache rows are copied);
* Llama-family models (llama, qwen2, mistral) run through one fused forward
  (:mod:`cotshape.generation.fused`: q/k/v and gate/up as single products, the decode mask an
  additive bias built once per step) instead of the stock modules; others use the stock forward;
* a prefix every prompt of a call starts with (the system turn, the few-shot exemplars of the
  sample stage: 536 of ~590 tokens with ``sample.shots: 4``) is run once and kept as one shared
  cache that every row attends to, so each row caches and reads only its own tokens (fused path);
* prompts are queued longest first, so merged rows have similar lengths;
* on CPU, glibc keeps freed memory for the next step's tensors instead of unmapping it
  (:func:`cotshape.core.allocator.reuse_freed_memory`: no page faults on every step's logits);
* each row samples with its own ``torch.Generator`` seeded from (prompt seed, sample index), so
  the random stream of a sample does not depend on which other rows share its batch. (The
  logits themselves can differ in the last bits with batch composition, in bf16 more than in
  fp32, so a sample is reproducible bit for bit for the same prompts and batch size.)

Greedy decoding (``temperature == 0``) takes the argmax. A prompt is chat messages or text (a
plain-text student prompt, tokenized as it is: :meth:`Backend.encode`); a row stops at EOS or at
the first of ``SamplingParams.stop`` (the task's plain stop strings, such as "Problem:"), which
is cut from the returned text.
"""

from __future__ import annotations

import functools
import os
from collections import deque
from dataclasses import dataclass, field

from cotshape.generation.base import (
    Backend,
    Completion,
    ProgressFn,
    Prompt,
    ResultFn,
    SamplingParams,
    derive_seed,
    prompt_seeds,
    truncate_at_stop,
)


@dataclass
class _Row:
    req: int  # index into the flat (prompt, sample) list
    prompt: int
    gen: object  # torch.Generator
    tokens: list[int] = field(default_factory=list)
    next_pos: int = 0  # position id of the token fed next
    done: str | None = None  # finish reason once finished


ATTN_NAME = "cotshape_decode"


def _attention(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """Attention registered with transformers' ``AttentionInterface`` for this backend's models.

    ``attention_mask`` is a boolean 4-D mask (True = attend), or None when nothing is masked. For one
    query token (decoding) the grouped query heads are folded into the matmul instead of
    repeating K/V (``repeat_kv`` copies the whole cache every layer and step), and the two small
    matmuls beat the CPU flash kernel, which is slow for a single query (measured: about 4x
    faster per decode step at batch 64 in bf16). Prefill goes to torch's SDPA.
    """
    import torch

    b, h, q, d = query.shape
    kvh = key.shape[1]
    if q == 1:
        qg = query.reshape(b, kvh, h // kvh, d)
        scores = torch.matmul(qg, key.transpose(-1, -2)).float() * scaling
        if attention_mask is not None:  # None: transformers found nothing to mask
            scores = scores.masked_fill(~attention_mask, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(value.dtype)
        out = torch.matmul(probs, value).reshape(b, h, 1, d)
    else:
        out = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=kvh != h,
            is_causal=attention_mask is None and q == key.shape[2],
        )
    return out.transpose(1, 2).contiguous(), None


TOP_P_CANDIDATES = 64


def top_p_draw(probs, top_p: float, u):
    """Nucleus (top-p) sampling by inverse CDF: row ``b`` keeps the smallest set of most likely
    tokens whose mass reaches ``top_p`` and picks the token where ``u[b]`` (uniform in [0, 1))
    falls in that set's renormalised CDF.

    Sorting the whole vocabulary every step costs more than the model's own decode step on a
    CPU (measured: ~40 ms for 32 x 49,152 probabilities, 25 % of the sampler's time). The
    nucleus is almost always small, so the ``TOP_P_CANDIDATES`` most likely tokens are taken with
    ``topk`` (same order as a full sort); only rows whose candidates hold less than ``top_p`` of
    the mass fall back to the full sort, so the result is the same as sorting everything.
    """
    import torch

    def draw(sp, si, uu):
        cum = sp.cumsum(-1)
        # keep the smallest prefix whose mass reaches top_p (always at least one token)
        sp = sp.masked_fill((cum - sp) >= top_p, 0.0)
        cum = sp.cumsum(-1)
        k = torch.searchsorted(cum, (uu * cum[:, -1]).unsqueeze(1).contiguous())
        return si.gather(1, k.clamp(max=cum.shape[1] - 1)).squeeze(1)

    kk = min(TOP_P_CANDIDATES, probs.shape[-1])
    sp, si = probs.topk(kk, dim=-1)
    nxt = draw(sp, si, u)
    short = (sp.cumsum(-1)[:, -1] < top_p).nonzero().flatten()  # the same sum ``draw`` compares
    if len(short) and kk < probs.shape[-1]:
        full_p, full_i = probs[short].sort(dim=-1, descending=True)
        nxt[short] = draw(full_p, full_i, u[short])
    return nxt


@functools.cache
def _slab_layer_class():
    """A ``DynamicLayer`` that writes new keys/values into a preallocated buffer instead of
    concatenating (``torch.cat`` copies the whole cache of every layer at every step).

    After the first (prefill) call, ``update`` returns the whole buffers, filled part first and
    the rest masked by the backend (see ``reserve``)."""
    import torch
    from transformers.cache_utils import DynamicLayer

    class SlabLayer(DynamicLayer):
        GROW = 128

        def __init__(self):
            super().__init__()
            self._k = self._v = None
            self._klen = self._vlen = 0  # filled length of each buffer (equal between calls)

        # keys/values: views of the filled part; assigning one replaces its buffer (used by the
        # cache's own methods and by the backend's merge/trim, in any order)
        @property
        def keys(self):
            return None if self._k is None else self._k[:, :, : self._klen]

        @keys.setter
        def keys(self, t):
            self._k, self._klen = t, (0 if t is None or t.dim() < 3 else t.shape[2])

        @property
        def values(self):
            return None if self._v is None else self._v[:, :, : self._vlen]

        @values.setter
        def values(self, t):
            self._v, self._vlen = t, (0 if t is None or t.dim() < 3 else t.shape[2])

        def get_seq_length(self) -> int:
            return self._klen

        def reserve(self, n: int) -> int:
            """Make the buffers contiguous with room for ``n`` positions; return the capacity.

            ``update`` returns the whole buffers (filled part first, the rest masked by the
            caller): a contiguous K/V is what the CPU bf16 matmul wants (a strided view of the
            filled part is copied inside every matmul, ~2.5x slower)."""
            if self._k is None:
                return 0
            if n > self._k.shape[2] or not self._k.is_contiguous():
                cap = max(n, self._klen) + self.GROW
                pad = (*self._k.shape[:2], cap - self._klen, self._k.shape[3])
                self._k = torch.cat([self._k[:, :, : self._klen], self._k.new_zeros(pad)], 2)
                self._v = torch.cat([self._v[:, :, : self._vlen], self._v.new_zeros(pad)], 2)
            return self._k.shape[2]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.device = key_states.device
                self.is_initialized = True
            q = key_states.shape[2]
            if self._k is None or self._klen == 0:
                self.keys, self.values = key_states, value_states
                return self.keys, self.values
            n = self._klen
            self.reserve(n + q)
            self._k[:, :, n : n + q] = key_states
            self._v[:, :, n : n + q] = value_states
            self._klen = self._vlen = n + q
            return self._k, self._v

        def compact(self, dst, src, n: int) -> None:
            """Copy rows ``src`` into rows ``dst``, then keep the first ``n`` rows (a view
            that stays contiguous)."""
            if self._k is None:
                return
            if len(dst):
                self._k[dst] = self._k[src]
                self._v[dst] = self._v[src]
            self._k, self._v = self._k[:n], self._v[:n]

        def batch_select_indices(self, indices):
            # keep the spare capacity: dropping finished rows must not force a regrow
            if self._k is not None:
                self._k, self._v = self._k[indices], self._v[indices]

    return SlabLayer


SHARED_PREFIX_MIN = 16  # shorter common prefixes are not worth a separate attention product


def shared_prefix_length(encoded: list[list[int]]) -> int:
    """Tokens every prompt starts with (0 when fewer than ``SHARED_PREFIX_MIN``); each prompt
    keeps at least one token of its own (its last prompt token gives the first logits)."""
    if not encoded:
        return 0
    n = len(os.path.commonprefix(encoded))
    n = min(n, min(len(e) for e in encoded) - 1)
    return n if n >= SHARED_PREFIX_MIN else 0


def slab_cache(model):
    """An empty ``DynamicCache`` for ``model`` whose layers are slab layers (``reserve(n)`` grows
    a layer's buffers and returns their capacity): what the backend and ``FusedDecoder``
    decode into."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    layer_cls = _slab_layer_class()
    cache.layers = [layer_cls() for _ in range(model.config.get_text_config(decoder=True).num_hidden_layers)]
    return cache


def _contiguous_head_input(model) -> None:
    """Make the LM head's input contiguous (a forward pre-hook, registered once per model).

    The stock forward with ``logits_to_keep=1`` hands the head ``hidden[:, -1:, :]``, a strided
    3-D view. With frozen weights (``requires_grad`` False, as after a LoRA merge: PEFT freezes
    the base) ``torch.matmul`` cannot fold that view into one 2-D product and runs a batched
    product against the weight expanded per row: for Gemma-3's 262k x 640 head and 128 rows a
    40 GiB copy (oneDNN's allocation fails, the fallback copies 5 GB for 16 rows), which made
    evaluating a fine-tuned Gemma-3-270M ~10x slower per token than its base model. Copying the
    [rows, 1, hidden] input is free and keeps every prefill a single 2-D product.
    """
    head = model.get_output_embeddings()
    if head is None or getattr(head, "_cotshape_contiguous_hook", False):
        return
    head.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]))
    head._cotshape_contiguous_hook = True


class TransformersBackend(Backend):
    """Batched sampling with Hugging Face transformers on CPU or GPU.

    ``batch_size`` is the number of rows (prompt x sample) decoded together; ``refill`` the
    number of free slots that triggers prefilling waiting rows (small: the batch stays full;
    larger: fewer, bigger prefill calls).
    """

    name = "transformers"

    @property
    def dtype(self) -> str | None:
        return str(self.model.dtype).removeprefix("torch.")

    def __init__(
        self,
        model_path: str | os.PathLike,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 128,
        refill: int | None = None,
        model=None,
        tokenizer=None,
        fused: bool = True,
    ) -> None:
        from cotshape.core.models import load_model, load_tokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model if model is not None else load_model(model_path, device=device, dtype=dtype)
        self.model.eval()
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        # the backend passes its own 4-D masks; the sdpa mask builder keeps the model usable
        # with stock ``generate`` and training code (same boolean mask convention)
        AttentionInterface.register(ATTN_NAME, _attention)
        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
        self.model.set_attn_implementation(ATTN_NAME)
        # transformers renamed the forward's ``past_key_values`` to ``cache`` (5.2x); the cache
        # object is updated in place, so only the argument name differs
        import inspect

        fwd = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in fwd else "past_key_values"
        # Llama-family models decode through one fused forward (generation/fused.py); others,
        # or ``fused=False``, through the stock forward with the attention registered above
        from cotshape.generation.fused import FusedDecoder, fused_reason

        self.fused_reason = "fused=False" if not fused else fused_reason(self.model)
        self._fused = FusedDecoder(self.model) if self.fused_reason is None else None
        if self._fused is None:
            _contiguous_head_input(self.model)
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(model_path)
        self.device = self.model.device
        if self.device.type == "cpu":  # decoding frees and reallocates the same large tensors every step
            from cotshape.core.allocator import reuse_freed_memory

            reuse_freed_memory()
        self.batch_size = batch_size
        self.refill = refill if refill is not None else max(1, batch_size // 8)
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        self.eos_ids = {int(e) for e in [*eos, self.tokenizer.eos_token_id] if e is not None}
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else min(self.eos_ids)

    # ---- prompts --------------------------------------------------------------------------

    # ---- the decode loop ------------------------------------------------------------------
    def generate(
        self,
        prompts: list[Prompt],
        params: SamplingParams,
        progress: ProgressFn | None = None,
        seeds: list[int] | None = None,
        on_result: ResultFn | None = None,
    ) -> list[list[Completion]]:
        import torch

        pseeds = prompt_seeds(params, len(prompts), seeds)
        encoded = [self.encode(p) for p in prompts]
        # a prompt prefix every row shares (system prompt, few-shot exemplars) is computed once
        # and attended by all rows from one copy (fused path only)
        skip = self._shared_length(encoded)
        shared = self._fused.prefix_cache(encoded[0][:skip], _slab_layer_class()) if skip else None
        n = params.n
        # longest prompts first; the n samples of a prompt stay together so they share a prefill
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        waiting = deque((i * n + j, i, j) for i in order for j in range(n))
        results: list[Completion | None] = [None] * (len(prompts) * n)
        pending = [n] * len(prompts)  # samples still running per prompt
        max_stop = max((len(s) for s in params.stop), default=0)

        rows: list[_Row] = []
        cache = None
        mask = None  # [B, T] long, 1 = real token
        last = None  # [B] last sampled token per row

        with torch.inference_mode():
            while waiting or rows:
                free = self.batch_size - len(rows)
                if waiting and (not rows or free >= min(self.refill, len(waiting))):
                    take = [waiting.popleft() for _ in range(min(free, len(waiting)))]
                    new_rows, new_cache, new_mask, logits = self.prefill(take, encoded, pseeds, skip, shared)
                    new_last = self._sample(logits, new_rows, params)
                    rows, cache, mask, last = self._merge(rows, cache, mask, last, new_rows, new_cache, new_mask, new_last)
                    sampled = len(new_rows)
                else:
                    step_mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)
                    # attend over whole contiguous cache buffers; unfilled slots are masked
                    cap = max(layer.reserve(step_mask.shape[1]) for layer in cache.layers)
                    attn = torch.cat([step_mask, mask.new_zeros(len(rows), cap - step_mask.shape[1])], dim=1).bool()
                    pos = torch.tensor([[r.next_pos] for r in rows], device=self.device)
                    if self._fused is not None:
                        bias = self._fused.decode_bias(attn, self.model.dtype)
                        logits = self._fused.forward(last[:, None], pos, cache.layers, decode_bias=bias, shared=shared)
                    else:
                        logits = self.model(
                            input_ids=last[:, None], attention_mask=attn[:, None, None, :], position_ids=pos,
                            use_cache=True, logits_to_keep=1, **{self._cache_kw: cache},
                        ).logits[:, -1, :]
                    mask = step_mask
                    for r in rows:
                        r.next_pos += 1
                    last = self._sample(logits, rows, params)
                    sampled = len(rows)
                if progress is not None:
                    progress(sampled)
                keep = self._finish_rows(rows, params, max_stop, results)
                if len(keep) < len(rows):
                    for b in sorted(set(range(len(rows))) - set(keep)):
                        i = rows[b].prompt
                        pending[i] -= 1
                        if pending[i] == 0 and on_result is not None:
                            on_result(i, results[i * n:(i + 1) * n])
                if len(keep) < len(rows):
                    if keep:
                        order = self._compact(cache, keep)
                        rows = [rows[i] for i in order]
                        mask, last = mask[order], last[order]
                        cache, mask = self._trim(cache, mask)
                    else:
                        rows, cache, mask, last = [], None, None, None
        return [results[i * n:(i + 1) * n] for i in range(len(prompts))]  # type: ignore[misc]

    def _shared_length(self, encoded: list[list[int]]) -> int:
        """Length of the prefix ``generate`` runs once for all of ``encoded`` (fused path only)."""
        return shared_prefix_length(encoded) if self._fused is not None else 0

    def prompt_tokens(self, prompts: list[Prompt]) -> int:
        """Prompt tokens ``generate`` runs through the model for ``prompts``: each prompt once (its
        samples share the prefill), the prefix common to all of them once. Exact when every row
        fits in the batch; with refills, a prompt whose samples join in two refills runs twice."""
        encoded = [self.encode(p) for p in prompts]
        skip = self._shared_length(encoded)
        return sum(len(e) - skip for e in encoded) + skip

    def prefill(self, take, encoded, pseeds, skip=0, shared=None):
        """The prefill step of :meth:`generate`: run the prompts of ``take`` once each (left-padded),
        then copy each prompt's cache rows for each of its samples. With a ``shared`` prefix cache
        the first ``skip`` tokens of every prompt are that prefix: only the rest is run and cached
        per row (what :meth:`prompt_tokens` counts)."""
        import torch

        uniq = list(dict.fromkeys(i for _, i, _ in take))
        own = {i: encoded[i][skip:] for i in uniq}
        width = max(len(own[i]) for i in uniq)
        ids = torch.full((len(uniq), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(uniq), width), dtype=torch.long)
        for b, i in enumerate(uniq):
            ids[b, width - len(own[i]):] = torch.tensor(own[i])
            mask[b, width - len(own[i]):] = 1
        pos = (mask.cumsum(-1) - 1).clamp(min=0) + skip
        ids, mask, pos = ids.to(self.device), mask.to(self.device), pos.to(self.device)
        # boolean 4-D mask: causal and not padding; a padding query attends to itself only, so
        # its (unused) keys/values stay finite instead of NaN from an all-masked softmax
        causal = torch.ones(width, width, dtype=torch.bool, device=self.device).tril()
        mask4 = (causal[None] & mask.bool()[:, None, :]) | torch.eye(width, dtype=torch.bool, device=self.device)[None]
        cache = slab_cache(self.model)
        if self._fused is not None:
            if shared is not None:  # every query also sees the whole shared prefix
                mask4 = torch.cat([mask4.new_ones(len(uniq), width, skip), mask4], dim=2)
            logits = self._fused.forward(ids, pos, cache.layers, prefill_mask=mask4[:, None], shared=shared)
        else:
            logits = self.model(
                input_ids=ids, attention_mask=mask4[:, None], position_ids=pos, use_cache=True, logits_to_keep=1,
                **{self._cache_kw: cache},
            ).logits[:, -1, :]
        where = {i: b for b, i in enumerate(uniq)}
        sel = torch.tensor([where[i] for _, i, _ in take], device=self.device)
        if len(take) != len(uniq) or sel.tolist() != list(range(len(uniq))):
            cache.batch_select_indices(sel)
        rows = []
        for req, i, j in take:
            g = torch.Generator()
            g.manual_seed(derive_seed(pseeds[i], j))
            rows.append(_Row(req=req, prompt=i, gen=g, next_pos=len(encoded[i])))
        return rows, cache, mask[sel], logits[sel]

    @staticmethod
    def _merge(rows, cache, mask, last, new_rows, new_cache, new_mask, new_last):
        """Append new rows to the running batch, left-padding the shorter cache."""
        import torch

        if not rows:
            return new_rows, new_cache, new_mask, new_last
        t_old, t_new = mask.shape[1], new_mask.shape[1]
        width = max(t_old, t_new)

        def lpad(x, t, dim):
            if t == width:
                return x
            shape = list(x.shape)
            shape[dim] = width - t
            return torch.cat([x.new_zeros(shape), x], dim=dim)

        for old_l, new_l in zip(cache.layers, new_cache.layers, strict=True):
            old_l.keys = torch.cat([lpad(old_l.keys, t_old, 2), lpad(new_l.keys, t_new, 2)], dim=0)
            old_l.values = torch.cat([lpad(old_l.values, t_old, 2), lpad(new_l.values, t_new, 2)], dim=0)
        mask = torch.cat([lpad(mask, t_old, 1), lpad(new_mask, t_new, 1)], dim=0)
        return rows + new_rows, cache, mask, torch.cat([last, new_last])

    def _compact(self, cache, keep: list[int]):
        """Drop finished rows from the cache, keeping its buffers contiguous: the last kept
        rows move into the holes (a copy of the moved rows only, not of the whole cache) and
        the buffers are cut to the first ``len(keep)`` rows. Returns the new row order as an
        index tensor (new position -> old position)."""
        import torch

        n_keep, kept = len(keep), set(keep)
        holes = [i for i in range(n_keep) if i not in kept]
        movers = [i for i in keep if i >= n_keep]
        order = list(range(n_keep))
        for h, m in zip(holes, movers, strict=True):
            order[h] = m
        dst = torch.tensor(holes, dtype=torch.long, device=self.device)
        src = torch.tensor(movers, dtype=torch.long, device=self.device)
        for layer in cache.layers:
            layer.compact(dst, src, n_keep)
        return torch.tensor(order, dtype=torch.long, device=self.device)

    @staticmethod
    def _trim(cache, mask):
        """Drop cache columns that are padding in every remaining row, when there are enough of
        them to pay for the copy of the whole cache that trimming costs."""
        first = int(mask.any(0).int().argmax())
        if first >= max(16, mask.shape[1] // 8):
            for layer in cache.layers:
                layer.keys = layer.keys[:, :, first:]
                layer.values = layer.values[:, :, first:]
            mask = mask[:, first:]
        return cache, mask

    def _sample(self, logits, rows: list[_Row], params: SamplingParams):
        """Next token of each row: argmax when greedy, else top-p sampling where row ``b`` draws
        its uniform number from its own generator (inverse-CDF sampling)."""
        import torch

        if params.greedy:
            nxt = logits.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / params.temperature, dim=-1)
            u = torch.stack([torch.rand((), generator=r.gen) for r in rows]).to(probs.device)
            if params.top_p < 1.0:
                nxt = top_p_draw(probs, params.top_p, u)
            else:  # inverse CDF over the whole vocabulary: no ordering needed
                cum = probs.cumsum(-1)
                # right side: a draw of exactly 0 must not pick a leading zero-probability token
                k = torch.searchsorted(cum, (u * cum[:, -1]).unsqueeze(1).contiguous(), side="right")
                nxt = k.clamp(max=cum.shape[1] - 1).squeeze(1)
        for r, t in zip(rows, nxt.tolist(), strict=True):
            r.tokens.append(t)
        return nxt

    def _finish_rows(self, rows: list[_Row], params: SamplingParams, max_stop: int, results) -> list[int]:
        """Record finished rows in ``results``; return the indices of rows still running."""
        keep = []
        for b, r in enumerate(rows):
            t = r.tokens[-1]
            if t in self.eos_ids:
                r.done = "stop"
            elif max_stop and self._hits_stop(r.tokens, params.stop, max_stop):
                r.done = "stop"
            elif len(r.tokens) >= params.max_new_tokens:
                r.done = "length"
            if r.done is None:
                keep.append(b)
                continue
            toks = r.tokens[:-1] if r.tokens[-1] in self.eos_ids else r.tokens
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            text, _ = truncate_at_stop(text, params.stop)
            results[r.req] = Completion(text=text, num_tokens=len(r.tokens), finish_reason=r.done)
        return keep

    def _hits_stop(self, tokens: list[int], stop: list[str], max_stop: int) -> bool:
        # A stop string of c characters spans at most c tokens (each token decodes to >= 1
        # character, or to a partial one that joins the next), so a window of c + 1 tokens
        # catches any stop string the newest token completes.
        tail = self.tokenizer.decode(tokens[-(max_stop + 1):], skip_special_tokens=True)
        return any(s in tail for s in stop)

    def close(self) -> None:
        self.model = None
