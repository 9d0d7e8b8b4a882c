"""The transformers backend on a tiny random Llama (real SmolLM2 tokenizer and chat template):
greedy correctness against stock ``generate``, left padding, stop strings, n > 1, seeds."""

from __future__ import annotations

import importlib.util

import pytest

from cotshape.generation import SamplingParams, get_backend

CHAT = [{"role": "user", "content": "What is 12 + 30? Think step by step."}]
PROMPTS = [
    CHAT,
    "Once upon a time, in a land far away, there lived a",
    "Hi",
    [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May."}],
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", batch_size=8)


@pytest.fixture(scope="module")
def backend1(tiny_model_dir):
    return get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", batch_size=1)


def test_greedy_matches_stock_generate(backend):
    import torch

    ids = backend.encode(CHAT)
    with torch.inference_mode():
        ref = backend.model.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False,
                                     attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    ref_text = backend.tokenizer.decode(ref[0, len(ids):], skip_special_tokens=True)
    [[c]] = backend.generate([CHAT], SamplingParams(max_new_tokens=12))
    assert c.text == ref_text


def test_greedy_is_deterministic(backend):
    p = SamplingParams(max_new_tokens=16)
    assert backend.generate(PROMPTS, p) == backend.generate(PROMPTS, p)


def test_left_padding_batched_equals_unbatched(backend, backend1):
    p = SamplingParams(max_new_tokens=16)
    assert backend.generate(PROMPTS, p) == backend1.generate(PROMPTS, p)


def test_length_finish(backend):
    [[c]] = backend.generate(["Hello"], SamplingParams(max_new_tokens=5))
    assert c.finish_reason == "length" and c.num_tokens == 5


def test_stop_string_truncates_and_finishes_with_stop(backend):
    [[free]] = backend.generate(["Once upon a time"], SamplingParams(max_new_tokens=24))
    stop = free.text[6:9]
    assert stop.strip(), "the tiny model's text is expected to have characters here"
    [[c]] = backend.generate(["Once upon a time"], SamplingParams(max_new_tokens=24, stop=[stop]))
    assert c.finish_reason == "stop"
    assert c.text == free.text[: free.text.find(stop)]
    assert c.num_tokens < 24


def test_n_samples_per_prompt(backend):
    out = backend.generate(PROMPTS[:2], SamplingParams(n=3, temperature=1.0, max_new_tokens=12, seed=0))
    assert [len(cs) for cs in out] == [3, 3]
    assert len({c.text for c in out[0]}) > 1  # a random model at T=1 does not repeat itself


def test_same_seed_same_samples_other_seed_other_samples(backend):
    p = SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=7)
    a, b = backend.generate(PROMPTS, p), backend.generate(PROMPTS, p)
    c = backend.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, top_p=0.9, max_new_tokens=12, seed=8))
    assert a == b and a != c


def test_sample_does_not_depend_on_batch_company(backend, backend1):
    """With per-prompt seeds, a prompt's samples are the same alone or among other prompts."""
    p = SamplingParams(n=2, temperature=1.0, max_new_tokens=12)
    together = backend.generate(PROMPTS, p, seeds=[11, 12, 13, 14])
    alone = backend1.generate([PROMPTS[2]], p, seeds=[13])
    assert together[2] == alone[0]


def test_on_result_reports_each_prompt_once(backend):
    got = []
    out = backend.generate(PROMPTS, SamplingParams(n=2, temperature=1.0, max_new_tokens=8),
                           on_result=lambda i, cs: got.append((i, cs)))
    assert sorted(i for i, _ in got) == [0, 1, 2, 3]
    assert all(out[i] == cs for i, cs in got)


def test_progress_counts_generated_tokens(backend):
    counted = []
    out = backend.generate(PROMPTS, SamplingParams(max_new_tokens=10), progress=counted.append)
    assert sum(counted) == sum(c.num_tokens for cs in out for c in cs)


def test_chat_prompt_uses_the_chat_template(backend):
    text = backend.tokenizer.decode(backend.encode(CHAT))
    assert text.endswith("<|im_start|>assistant\n") and "<|im_start|>user" in text


def test_bad_prompt_is_refused(backend):
    with pytest.raises(ValueError, match="prompt must be a string or a list"):
        backend.generate([[{"text": "no role"}]], SamplingParams())


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'vlm'"):
        get_backend("vlm", "x")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_missing_vllm_names_the_extra(tiny_model_dir):
    with pytest.raises(ImportError, match=r"pip install 'cotshape\[gpu\]'"):
        get_backend("vllm", tiny_model_dir)


def test_bad_sampling_params():
    with pytest.raises(ValueError, match="stop must be a list of non-empty strings"):
        SamplingParams(stop=[""])


def test_refilled_batches_equal_one_at_a_time(tiny_model_dir):
    """Rows stop at different steps (a common stop letter), so finished rows leave, waiting
    rows are prefilled and merged into the running batch and padding columns are trimmed;
    the samples must still equal those decoded one row at a time. In float64: a matrix
    product of one row and of several rows round differently in the last bits (gemv vs gemm),
    which at float32 can flip a sampled token now and then."""
    from cotshape.core.models import load_model

    def backend64(batch_size, **kw):
        return get_backend("transformers", tiny_model_dir, device="cpu", batch_size=batch_size,
                           model=load_model(tiny_model_dir, dtype="float32").double(), **kw)

    prompts = PROMPTS * 3
    p = SamplingParams(n=2, temperature=1.0, max_new_tokens=20, stop=["e"])
    got = backend64(3, refill=1).generate(prompts, p, seeds=list(range(len(prompts))))
    assert len({c.num_tokens for cs in got for c in cs}) > 3  # rows really finished at different steps
    assert got == backend64(1).generate(prompts, p, seeds=list(range(len(prompts))))


def _top_p_reference(probs, top_p, u):
    """Nucleus sampling by inverse CDF over the fully sorted vocabulary (the definition)."""
    import torch

    sp, si = probs.sort(dim=-1, descending=True)
    cum = sp.cumsum(-1)
    sp = sp.masked_fill((cum - sp) >= top_p, 0.0)
    cum = sp.cumsum(-1)
    k = torch.searchsorted(cum, (u * cum[:, -1]).unsqueeze(1).contiguous())
    return si.gather(1, k.clamp(max=cum.shape[1] - 1)).squeeze(1)


@pytest.mark.parametrize("candidates", [4, 64])
def test_top_p_candidates_equal_full_sort(monkeypatch, candidates):
    """The top-k shortcut draws the same token as sorting the whole vocabulary, both for peaked
    rows (nucleus inside the candidates) and flat rows (fallback to the full sort)."""
    import torch

    from cotshape.generation import transformers_backend as tb

    monkeypatch.setattr(tb, "TOP_P_CANDIDATES", candidates)
    g = torch.Generator().manual_seed(0)
    peaked = torch.softmax(torch.randn(16, 500, generator=g) * 6, -1)
    flat = torch.softmax(torch.randn(16, 500, generator=g) * 0.1, -1)
    probs = torch.cat([peaked, flat])
    for top_p in (0.5, 0.9, 0.95, 0.999):
        for _ in range(5):
            u = torch.rand(len(probs), generator=g)
            assert torch.equal(tb.top_p_draw(probs, top_p, u), _top_p_reference(probs, top_p, u))


# ---- the fused Llama-family forward and the shared prompt prefix ----------------------------

def _tiny(model_type: str):
    """A tiny random decoder of ``model_type`` (llama with attention bias = Qwen2's layout)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(1)
    cfg = AutoConfig.for_model(model_type, vocab_size=300, hidden_size=64, intermediate_size=96,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=256, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_fused_forward_matches_stock_forward(model_type):
    """Prefill and decode steps through FusedDecoder give the stock model's logits (float32),
    with q/k/v and gate/up fused (Qwen2: with the q/k/v biases), left padding and a cache."""
    import torch

    from cotshape.generation.fused import FusedDecoder, fused_reason
    from cotshape.generation.transformers_backend import slab_cache

    model = _tiny(model_type)
    assert fused_reason(model) is None
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (3, 9))
    with torch.inference_mode():
        ref = model(input_ids=ids).logits  # [3, 9, V]
        fused = FusedDecoder(model)  # the modules' weights become views: the stock forward is unchanged
        assert torch.equal(model(input_ids=ids).logits, ref)
        cache = slab_cache(model)
        pos = torch.arange(9)[None].expand(3, 9)
        got = fused.forward(ids[:, :6], pos[:, :6], cache.layers)
        assert torch.allclose(got, ref[:, 5], atol=1e-5)
        for t in range(6, 9):
            (cap,) = {layer.reserve(t + 1) for layer in cache.layers}  # one capacity, every layer
            attend = torch.zeros(3, cap, dtype=torch.bool)
            attend[:, : t + 1] = True  # the slab's unfilled tail stays masked
            got = fused.forward(ids[:, t:t + 1], pos[:, t:t + 1], cache.layers,
                                decode_bias=fused.decode_bias(attend, torch.float32))
            assert torch.allclose(got, ref[:, t], atol=1e-5), t


def test_packed_projections_are_bit_identical():
    """On a CPU in bf16 the fused forward multiplies by weights packed once into oneDNN's layout
    (packed_linear): prefill and decode logits equal those through F.linear bit for bit."""
    import torch

    from cotshape.generation.fused import FusedDecoder, packed_linear
    from cotshape.generation.transformers_backend import slab_cache

    model = _tiny("qwen2")  # with q/k/v biases
    assert packed_linear(model) is None  # float32: F.linear
    model = model.to(torch.bfloat16)
    if packed_linear(model) is None:
        pytest.skip("no oneDNN bf16 on this CPU")
    packed, plain = FusedDecoder(model), FusedDecoder(model, pack=False)
    assert packed.packed and not plain.packed
    torch.manual_seed(0)
    ids = torch.randint(3, 300, (3, 9))
    pos = torch.arange(9)[None].expand(3, 9)
    with torch.inference_mode():
        caches = [slab_cache(model), slab_cache(model)]
        got = [fd.forward(ids[:, :6], pos[:, :6], c.layers) for fd, c in zip((packed, plain), caches, strict=True)]
        assert torch.equal(got[0], got[1])
        for t in range(6, 9):
            (cap,) = {layer.reserve(t + 1) for layer in (*caches[0].layers, *caches[1].layers)}
            attend = torch.zeros(3, cap, dtype=torch.bool)
            attend[:, : t + 1] = True
            got = [fd.forward(ids[:, t:t + 1], pos[:, t:t + 1], c.layers,
                              decode_bias=fd.decode_bias(attend, torch.bfloat16))
                   for fd, c in zip((packed, plain), caches, strict=True)]
            assert torch.equal(got[0], got[1]), t


def test_unsupported_models_use_the_stock_forward(tiny_model_dir):
    from cotshape.core.models import load_model
    from cotshape.generation.fused import fused_reason

    model = load_model(tiny_model_dir, dtype="float32")
    model.config.hidden_act = "gelu"
    assert "hidden_act" in fused_reason(model)
    model.config.model_type = "gemma2"
    assert "gemma2" in fused_reason(model)
    b = get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", batch_size=4, model=model)
    assert "gemma2" in b.fused_reason  # a reason: the stock forward (no fused decoder)
    assert get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", fused=False).fused_reason == "fused=False"


def test_stock_forward_gives_the_head_a_contiguous_input_with_frozen_weights(tiny_model_dir):
    """A merged LoRA model has frozen weights; the stock forward's ``logits_to_keep=1`` slice
    ``hidden[:, -1:]`` is then a strided view that ``matmul`` cannot fold into one 2-D product
    (it expands the head's weight per row: 40 GiB for Gemma-3's head at 128 rows). The backend
    makes the head's input contiguous; the samples are those of the fused path."""
    from cotshape.core.models import load_model

    model = load_model(tiny_model_dir, dtype="float32").double().requires_grad_(False)
    stock = get_backend("transformers", tiny_model_dir, device="cpu", batch_size=4, fused=False, model=model)
    seen = []
    head = model.get_output_embeddings()
    head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].is_contiguous()))  # runs after the backend's
    get_backend("transformers", tiny_model_dir, device="cpu", fused=False, model=model)  # registered once only
    assert len(head._forward_pre_hooks) == 2
    chats = [[{"role": "user", "content": f"Problem {i}: what is {i} + {i * 7}?" + " more" * i}] for i in range(5)]
    p = SamplingParams(n=1, temperature=0.0, max_new_tokens=6)
    out = stock.generate(chats, p)
    assert seen and all(seen)
    fast = get_backend("transformers", tiny_model_dir, device="cpu", batch_size=4,
                       model=load_model(tiny_model_dir, dtype="float32").double())
    assert fast.generate(chats, p) == out


def test_fused_and_stock_backends_sample_the_same(tiny_model_dir):
    """The whole decode loop (prefill, refills, shared prefix, compaction) through the fused
    forward and through the stock forward: the same samples (float64, see above)."""
    from cotshape.core.models import load_model

    def b64(fused):
        return get_backend("transformers", tiny_model_dir, device="cpu", batch_size=3, refill=1, fused=fused,
                           model=load_model(tiny_model_dir, dtype="float32").double())

    chats = [[{"role": "user", "content": f"Problem {i}: what is {i} + {i * 7}?"}] for i in range(5)]
    p = SamplingParams(n=2, temperature=1.0, max_new_tokens=16, stop=["e"])
    fast, stock = b64(True), b64(False)
    assert fast.fused_reason is None and stock.fused_reason == "fused=False"
    assert fast.generate(chats, p, seeds=list(range(5))) == stock.generate(chats, p, seeds=list(range(5)))


def test_shared_prefix_is_computed_once_and_changes_nothing(tiny_model_dir, monkeypatch):
    """Chat prompts share the system turn: that prefix is run once and attended from one copy;
    the samples equal those without sharing (float64)."""
    from cotshape.core.models import load_model
    from cotshape.generation import transformers_backend as tb
    from cotshape.generation.fused import FusedDecoder

    b = get_backend("transformers", tiny_model_dir, device="cpu", batch_size=4,
                    model=load_model(tiny_model_dir, dtype="float32").double())
    chats = [[{"role": "user", "content": f"Problem {i}: what is {i} + {i * 7}?"}] for i in range(6)]
    encoded = [b.encode(c) for c in chats]
    skip = tb.shared_prefix_length(encoded)
    assert skip >= tb.SHARED_PREFIX_MIN and all(e[:skip] == encoded[0][:skip] for e in encoded)
    calls = []
    real = FusedDecoder.prefix_cache
    monkeypatch.setattr(FusedDecoder, "prefix_cache", lambda self, ids, new: calls.append(len(ids)) or real(self, ids, new))
    p = SamplingParams(n=2, temperature=1.0, max_new_tokens=12)
    shared = b.generate(chats, p, seeds=list(range(6)))
    assert calls == [skip]
    monkeypatch.setattr(tb, "SHARED_PREFIX_MIN", 10**9)
    assert b.generate(chats, p, seeds=list(range(6))) == shared
    assert calls == [skip]  # not called again: sharing was off


def test_prompt_tokens_counts_what_prefill_runs(tiny_model_dir, monkeypatch):
    """``prompt_tokens``: each prompt's own tokens once (its n samples share the prefill) plus the
    shared prefix once: what the prefills of ``generate`` run when every row fits in one batch."""
    from cotshape.generation import transformers_backend as tb
    from cotshape.generation.fused import FusedDecoder

    b = get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", batch_size=18)
    chats = [[{"role": "user", "content": f"Problem {i}: what is {i} + {i * 7}?"}] for i in range(6)]
    ran = []
    real_prefix, real_prefill = FusedDecoder.prefix_cache, tb.TransformersBackend.prefill
    monkeypatch.setattr(FusedDecoder, "prefix_cache", lambda self, ids, new: ran.append(len(ids)) or real_prefix(self, ids, new))

    def prefill(self, take, encoded, pseeds, skip=0, shared=None):
        ran.extend(len(encoded[i]) - skip for i in dict.fromkeys(i for _, i, _ in take))
        return real_prefill(self, take, encoded, pseeds, skip, shared)

    monkeypatch.setattr(tb.TransformersBackend, "prefill", prefill)
    b.generate(chats, SamplingParams(n=3, temperature=1.0, max_new_tokens=4), seeds=list(range(6)))
    encoded = [b.encode(c) for c in chats]
    skip = tb.shared_prefix_length(encoded)
    assert skip > 0 and b.prompt_tokens(chats) == sum(ran) == skip + sum(len(e) - skip for e in encoded)
    stock = get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", fused=False)
    assert stock.prompt_tokens(chats) == sum(len(e) for e in encoded)  # no shared prefix off the fused path


def test_shared_prefix_length():
    from cotshape.generation.transformers_backend import SHARED_PREFIX_MIN, shared_prefix_length

    long = list(range(100))
    assert shared_prefix_length([]) == 0
    assert shared_prefix_length([long + [1], long + [2, 3]]) == 100
    assert shared_prefix_length([long, long]) == 99  # every prompt keeps a token of its own
    assert shared_prefix_length([long, long[:50]]) == 49
    assert shared_prefix_length([long[:SHARED_PREFIX_MIN - 1] + [7], long]) == 0  # too short to pay
    assert shared_prefix_length([[5] + long, long]) == 0
