"""A fused forward pass for Llama-family decoders, used by the transformers backend's decode loop.

Why: on a CPU, a decode step of a small model (SmolLM2-135M: 30 layers of 576 wide) at batch
128 spends about a fifth of its time outside the matrix products, in the ~40 small operations
and Python module calls per layer of the stock ``LlamaDecoderLayer`` (separate q/k/v and
gate/up projections, a float mask filled per layer, dtype round trips). The same arithmetic in
fewer, larger operations:

* q, k and v are one projection (their weights concatenated), gate and up are one projection;
  the modules' own weights become views of the fused tensors, so no memory is duplicated and
  the stock forward still works on the same model;
* RMSNorm is ``torch.nn.functional.rms_norm`` in float32 (as the stock norm computes it);
* rotary embedding is applied to q and k together (one set of operations per layer);
* the decode mask is an additive bias built once per step and folded into the attention score
  product (``baddbmm``); grouped query heads are folded into that product instead of repeating
  K/V (the same arithmetic as the backend's registered attention);
* on a CPU in bfloat16 the projection weights are packed once into oneDNN's blocked layout
  (:func:`packed_linear`): ``F.linear`` repacks a bf16 weight on every call, which at decode
  batch sizes (32-128 rows) is 10-25 % of the product's time; the products are bit-identical.

Supported: ``model_type`` llama, qwen2 and mistral with SiLU MLPs, no MLP bias, no sliding
window, not quantized (:func:`fused_reason` says why a model is not). Other models use the
stock forward. ``tests/test_generation.py`` checks the logits against the stock forward.
"""

from __future__ import annotations

SUPPORTED_TYPES = ("llama", "qwen2", "mistral")


def fused_reason(model) -> str | None:
    """None when :class:`FusedDecoder` can run ``model``; otherwise why not (for the log)."""
    import torch

    cfg = model.config
    if getattr(cfg, "model_type", None) not in SUPPORTED_TYPES:
        return f"model_type {getattr(cfg, 'model_type', None)!r} is not one of {', '.join(SUPPORTED_TYPES)}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"hidden_act {cfg.hidden_act!r} (fused path: silu)"
    if getattr(cfg, "mlp_bias", False):
        return "MLP bias"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    if getattr(model, "hf_quantizer", None) is not None:
        return "quantized weights"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head"):
        return "not a decoder with model.layers and lm_head"
    for layer in layers:
        a, m = layer.self_attn, layer.mlp
        for lin in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj):
            if type(lin) is not torch.nn.Linear:  # LoRA-wrapped, quantized, ...
                return f"{type(lin).__name__} projection (fused path: plain nn.Linear)"
    return None


def _fuse(linears):
    """One weight (and bias) for several projections of the same input; the modules' weights
    become views of it (same values, no second copy)."""
    import torch

    w = torch.cat([lin.weight.detach() for lin in linears])
    biases = [lin.bias for lin in linears]
    b = None
    if any(x is not None for x in biases):
        b = torch.cat([x.detach() if x is not None else w.new_zeros(lin.out_features)
                       for x, lin in zip(biases, linears, strict=True)])
    start = 0
    for lin in linears:
        n = lin.out_features
        lin.weight = torch.nn.Parameter(w[start:start + n], requires_grad=False)
        if lin.bias is not None:
            lin.bias = torch.nn.Parameter(b[start:start + n], requires_grad=False)
        start += n
    return w, b


def packed_linear(model):
    """``(pack, linear)`` for the projections of ``model``, or None where packing does not apply.

    On a CPU in bfloat16 with oneDNN, ``pack(w)`` reorders a weight once into oneDNN's blocked
    layout and ``linear(x, packed, bias)`` multiplies by it (the op torch's inductor uses for
    frozen CPU linears); ``F.linear`` reorders the weight inside every call. The result is
    bit-identical (``tests/test_generation.py``); the packed copies hold as much memory as the
    weights themselves (270 MB for SmolLM2-135M)."""
    import torch

    if model.device.type != "cpu" or model.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return None
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_reorder_linear_weight") and hasattr(ops, "_linear_pointwise")):
        return None
    if not ops._is_mkldnn_bf16_supported():  # no native bf16 on this CPU: emulation is slower
        return None

    def pack(w):
        return ops._reorder_linear_weight(w.detach(), PACK_ROWS)

    def linear(x, w, b=None):
        return ops._linear_pointwise(x, w, b, "none", [], "")

    return pack, linear


PACK_ROWS = 128  # the row count oneDNN picks the packed layout for (measured alike for 1-512)


class _Layer:
    __slots__ = ("w_in", "wqkv", "bqkv", "wo", "bo", "w_post", "wgu", "wd", "eps_in", "eps_post")


class FusedDecoder:
    """``forward(ids, positions, cache_layers, ...)`` -> last-position logits, with the KV cache
    held in the backend's slab layers (``update`` returns the whole contiguous buffers)."""

    def __init__(self, model, pack: bool = True) -> None:
        """``pack``: use :func:`packed_linear` where it applies (False: ``F.linear``)."""
        import torch.nn.functional as F

        cfg = model.config.get_text_config(decoder=True)
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.rotary = inner.rotary_emb
        self.norm_w, self.norm_eps = inner.norm.weight, _eps(inner.norm)
        self.lm_head = model.lm_head.weight
        self.lm_bias = model.lm_head.bias
        self.n_heads = cfg.num_attention_heads
        self.n_kv = getattr(cfg, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.scaling = inner.layers[0].self_attn.scaling
        self.layers = []
        for layer in inner.layers:
            a, m = layer.self_attn, layer.mlp
            fl = _Layer()
            fl.w_in, fl.eps_in = layer.input_layernorm.weight, _eps(layer.input_layernorm)
            fl.w_post, fl.eps_post = layer.post_attention_layernorm.weight, _eps(layer.post_attention_layernorm)
            fl.wqkv, fl.bqkv = _fuse([a.q_proj, a.k_proj, a.v_proj])
            fl.wo, fl.bo = a.o_proj.weight, a.o_proj.bias
            fl.wgu, _ = _fuse([m.gate_proj, m.up_proj])
            fl.wd = m.down_proj.weight
            self.layers.append(fl)
        packing = packed_linear(model) if pack else None
        self.packed = packing is not None
        self.linear = F.linear
        if packing is not None:
            do_pack, self.linear = packing
            self.lm_head = do_pack(self.lm_head)
            for fl in self.layers:
                fl.wqkv, fl.wo, fl.wgu, fl.wd = (do_pack(w) for w in (fl.wqkv, fl.wo, fl.wgu, fl.wd))

    def decode_bias(self, attend, dtype):
        """Additive attention bias for a decode step: [B * kv_heads, 1, T], 0 where ``attend``
        (bool [B, T]) and -inf elsewhere; built once per step, shared by every layer."""
        import torch

        bias = torch.zeros(attend.shape, dtype=dtype, device=attend.device).masked_fill_(~attend, float("-inf"))
        return bias.repeat_interleave(self.n_kv, dim=0)[:, None, :]

    def forward(self, ids, positions, cache_layers, *, decode_bias=None, prefill_mask=None, shared=None):
        """Logits of the last position of each row, [B, vocab].

        ``ids``/``positions``: [B, q]. Decoding (q == 1) passes ``decode_bias`` from
        :meth:`decode_bias` over the cache buffers as they will be after this step's write;
        prefill takes ``prefill_mask``, a boolean [B, 1, q, keys] mask (True = attend; None:
        causal). ``shared``: keys and values of a prompt prefix every row starts with (from
        :meth:`prefix_cache`), attended by every row before its own cache (``prefill_mask``
        then covers the prefix columns too)."""
        import torch
        import torch.nn.functional as F

        b, q = ids.shape
        nh, kvh, d = self.n_heads, self.n_kv, self.head_dim
        x = F.embedding(ids, self.embed)
        cos, sin = self.rotary(x, positions)  # [B, q, d] each, in x's dtype
        cos, sin = cos[:, :, None, :], sin[:, :, None, :]
        half = d // 2
        for i, (fl, cache) in enumerate(zip(self.layers, cache_layers, strict=True)):
            h = _rms(x, fl.w_in, fl.eps_in)
            qkv = self.linear(h, fl.wqkv, fl.bqkv).view(b, q, nh + 2 * kvh, d)
            qk = qkv[:, :, : nh + kvh]
            rot = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos + rot * sin
            keys, values = cache.update(qk[:, :, nh:].transpose(1, 2), qkv[:, :, nh + kvh:].transpose(1, 2))
            sh = None if shared is None else shared[i]
            if decode_bias is not None:  # decoding: one query per row
                att = self._decode_attention(qk[:, 0, :nh], keys, values, decode_bias, sh)
            else:
                if sh is not None:
                    keys = torch.cat([sh[0].expand(b, -1, -1, -1), keys], dim=2)
                    values = torch.cat([sh[1].expand(b, -1, -1, -1), values], dim=2)
                att = F.scaled_dot_product_attention(
                    qk[:, :, :nh].transpose(1, 2), keys, values, attn_mask=prefill_mask, scale=self.scaling,
                    enable_gqa=kvh != nh, is_causal=prefill_mask is None,
                ).transpose(1, 2).reshape(b, q, nh * d)
            x = x + self.linear(att, fl.wo, fl.bo)
            h = _rms(x, fl.w_post, fl.eps_post)
            gate, up = self.linear(h, fl.wgu).chunk(2, dim=-1)
            x = x + self.linear(F.silu(gate) * up, fl.wd)
        x = _rms(x[:, -1], self.norm_w, self.norm_eps)
        return self.linear(x, self.lm_head, self.lm_bias)

    def _decode_attention(self, q, keys, values, bias, shared):
        """One query per row. ``q``: [B, heads, d]; ``keys``/``values``: the rows' own cache
        [B, kv_heads, T, d]; ``shared``: (keys, values) [1, kv_heads, P, d] of the common prefix.

        The rows' scores over the shared prefix are one matrix product per kv head ([B * g, d] x
        [d, P]: the prefix is read once per step, not once per row), joined to the own-cache
        scores before one softmax; the probabilities are split again for the two value products."""
        import torch

        b, nh, d = q.shape
        kvh = keys.shape[1]
        g = nh // kvh
        t = keys.shape[2]
        qg = q.reshape(b * kvh, g, d)
        scores = torch.baddbmm(bias, qg, keys.view(b * kvh, t, d).transpose(1, 2), alpha=self.scaling)
        if shared is None:
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(values.dtype)
            return torch.bmm(probs, values.view(b * kvh, t, d)).view(b, 1, nh * d)
        sk, sv = shared[0][0], shared[1][0]  # [kvh, P, d]
        p = sk.shape[1]
        qs = q.view(b, kvh, g, d).transpose(0, 1).reshape(kvh, b * g, d)
        s_sh = torch.bmm(qs, sk.transpose(1, 2)).mul_(self.scaling)  # [kvh, B*g, P]
        s_sh = s_sh.view(kvh, b, g, p).transpose(0, 1).reshape(b * kvh, g, p)
        probs = torch.softmax(torch.cat([s_sh, scores], dim=-1), dim=-1, dtype=torch.float32).to(values.dtype)
        p_sh = probs[..., :p].reshape(b, kvh, g, p).transpose(0, 1).reshape(kvh, b * g, p)
        out_sh = torch.bmm(p_sh, sv).view(kvh, b, g, d).transpose(0, 1).reshape(b * kvh, g, d)
        out = torch.baddbmm(out_sh, probs[..., p:].contiguous(), values.view(b * kvh, t, d))
        return out.view(b, 1, nh * d)

    def prefix_cache(self, ids, new_layer):
        """Keys and values of one token sequence ``ids`` (a list), per layer: [(k, v)] with k, v
        of shape [1, kv_heads, len(ids), d]; ``new_layer()`` makes an empty cache layer."""
        import torch

        t = torch.tensor([ids], dtype=torch.long, device=self.embed.device)
        layers = [new_layer() for _ in self.layers]
        self.forward(t, torch.arange(len(ids), device=t.device)[None], layers)
        return [(layer.keys.contiguous(), layer.values.contiguous()) for layer in layers]


def _eps(norm) -> float:
    return float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))


def _rms(x, weight, eps: float):
    """Llama RMSNorm: normalise in float32, cast back, then scale (the stock order)."""
    import torch.nn.functional as F

    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
