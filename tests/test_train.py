"""SFT (cotshape.sft: tokenize, cpu_kernels, config, checkpoints, train) on the tiny test model:
masking, padding-free equivalence, training, saving and reloading (full and LoRA), params
validation and the launch command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from cotshape.core.artifacts import TRAIN_LOG
from cotshape.sft.checkpoints import MARKER, load_trained
from cotshape.sft.config import build_sft_config
from cotshape.sft.cpu_kernels import use_cpu_label_head, use_varlen_sdpa
from cotshape.sft.params import SFTParams
from cotshape.sft.tokenize import tokenize_example, tokenize_records
from cotshape.sft.train import launch_command, train_sft

REPO = Path(__file__).resolve().parents[1]

RECORDS = [
    {"id": "a", "problem_id": "p1", "task": "gsm8k", "set": "H",
     "prompt": [{"role": "user", "content": "What is 2 + 3?"}],
     "completion": "2 + 3 = 5.\n#### 5"},
    {"id": "b", "problem_id": "p2", "task": "gsm8k", "set": "H",
     "prompt": [{"role": "user", "content": "Tom has 4 apples and eats one. How many are left?"}],
     "completion": "He had 4 and ate 1, so 4 - 1 = 3 apples are left.\n#### 3"},
    {"id": "c", "problem_id": "p3", "task": "gsm8k", "set": "H",
     "prompt": [{"role": "user", "content": "A box holds 6 eggs. How many eggs are in 7 boxes?"}],
     "completion": "Each box holds 6 eggs, so 7 boxes hold 7 * 6 = 42 eggs.\n#### 42"},
]

FAST = dict(epochs=2, learning_rate=1e-2, batch_size=2, warmup_ratio=0.0, dtype="float32", seed=0)


def _tok(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


# ---------------------------------------------------------------- params


def test_params_yaml_section_builds_sftparams():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    p = SFTParams(**params["sft"], seed=params["base"]["seed"])
    assert p.method in ("lora", "full") and p.batch_size >= 1


@pytest.mark.parametrize(
    "kw, key",
    [({"method": "qlora"}, "sft.method"), ({"dtype": "fp8"}, "sft.dtype"), ({"batch_size": 0}, "sft.batch_size"),
     ({"warmup_ratio": 1.0}, "sft.warmup_ratio"), ({"launcher": "slurm"}, "sft.launcher"),
     ({"padding_free": "yes"}, "sft.padding_free"), ({"epochs": 0}, "sft.epochs"),
     ({"num_processes": 2}, "sft.launcher")],
)
def test_params_bad_value_names_the_key(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        SFTParams(**kw)


def test_params_every_field_has_help():
    assert all(text for text in SFTParams.help().values())


def test_sft_config_sets_dtype_checkpointing_and_loss_explicitly(tmp_path):
    cfg = build_sft_config(SFTParams(dtype="float32", padding_free=True, max_length=300), tmp_path)
    assert cfg.bf16 is False and cfg.fp16 is False
    assert cfg.gradient_checkpointing is False
    assert cfg.completion_only_loss is True
    assert cfg.padding_free is True and cfg.max_length is None  # cut by tokenize_records instead
    assert cfg.report_to in ([], "none", ["none"])
    assert cfg.save_strategy == "no"
    padded = build_sft_config(SFTParams(dtype="bfloat16", padding_free=False, max_length=300), tmp_path)
    assert padded.bf16 is True and padded.max_length == 300


# ---------------------------------------------------------------- tokenization / masking


def test_prompt_tokens_are_masked(tiny_model_dir):
    tok = _tok(tiny_model_dir)
    ex = tokenize_example(tok, RECORDS[0]["prompt"], RECORDS[0]["completion"])
    mask = ex["completion_mask"]
    n_prompt = mask.index(1)
    assert set(mask[:n_prompt]) == {0} and set(mask[n_prompt:]) == {1}
    prompt_text = tok.decode(ex["input_ids"][:n_prompt])
    completion_text = tok.decode(ex["input_ids"][n_prompt:])
    assert "What is 2 + 3?" in prompt_text and "2 + 3" not in completion_text.replace("2 + 3 = 5", "")
    assert completion_text.startswith("2 + 3 = 5.\n#### 5<|im_end|>")


def test_tokenization_matches_trl_preparation(tiny_model_dir, tmp_path):
    """Our ids and labels are exactly what SFTTrainer builds from the conversational records."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tok = _tok(tiny_model_dir)
    data = Dataset.from_list([
        {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}]} for r in RECORDS
    ])
    cfg = SFTConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to="none",
                    completion_only_loss=True, max_length=1024)
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=cfg,
                         train_dataset=data, processing_class=tok)
    ours = tokenize_records(tok, RECORDS, 1024)
    for row, mine in zip(trainer.train_dataset, ours, strict=True):
        assert row["input_ids"] == mine["input_ids"]
        assert row["labels"] == [t if m else -100 for t, m in zip(mine["input_ids"], mine["completion_mask"], strict=True)]


def test_max_length_cuts_and_drops_examples_without_completion(tiny_model_dir):
    tok = _tok(tiny_model_dir)
    full = tokenize_records(tok, RECORDS[:1], None)[0]
    n_prompt = full["completion_mask"].index(1)
    cut = tokenize_records(tok, RECORDS[:1], n_prompt + 2)[0]
    assert cut["input_ids"] == full["input_ids"][: n_prompt + 2]
    assert tokenize_records(tok, RECORDS[:1], n_prompt) == []


def test_bad_record_names_the_record():
    bad = dict(RECORDS[0], completion=7)
    with pytest.raises(ValueError, match=r"record 1 \(id 'a'\): 'completion'"):
        tokenize_records(None, [RECORDS[1], bad], None)


def _labelled_examples(tok) -> list[dict]:
    """RECORDS as collator input: token ids and labels (-100 on prompt tokens)."""
    out = []
    for ex in tokenize_records(tok, RECORDS, None):
        labels = [t if m else -100 for t, m in zip(ex["input_ids"], ex["completion_mask"], strict=True)]
        out.append({"input_ids": ex["input_ids"], "labels": labels})
    return out


@pytest.mark.parametrize("varlen, math_max", [(False, 512), (True, 0), (True, 512)],
                         ids=["sdpa-block-mask", "varlen-sdpa", "varlen-math"])
def test_padding_free_loss_equals_padded_loss(tiny_model_dir, varlen, math_max, monkeypatch):
    """A padding-free batch (one row, per-example position ids) gives the padded loss: no token
    attends across examples, with plain sdpa (dense block-diagonal mask) and with the per-example
    causal attention train_sft uses (sdpa's kernel, or the matrix-product path for short examples)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    import cotshape.sft.cpu_kernels as kernels

    monkeypatch.setattr(kernels, "VARLEN_MATH_MAX", math_max)
    tok = _tok(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    if varlen:
        assert use_varlen_sdpa(model) == "sdpa"
    import transformers.integrations.sdpa_attention as sdpa_mod

    seen = []  # query lengths reaching the per-example kernel chosen (varlen path)
    # (module, kernel name, position of the query argument)
    owner, name, q_arg = ((sdpa_mod, "sdpa_attention_forward", 1) if math_max == 0
                          else (kernels, "causal_attention_math", 0))
    real = getattr(owner, name)

    def spy(*a, **kw):
        seen.append(a[q_arg].shape[2])
        return real(*a, **kw)

    monkeypatch.setattr(owner, name, spy)
    examples = _labelled_examples(tok)
    assert len({len(e["input_ids"]) for e in examples}) == 3  # different lengths: real padding
    padded = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)(examples)
    flat = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples)
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat
    with torch.no_grad():
        loss_padded = model(input_ids=padded["input_ids"], attention_mask=padded["attention_mask"],
                            labels=padded["labels"]).loss
        # use_cache=False as SFTTrainer.compute_loss sets it: with a cache, transformers does not
        # derive the block-diagonal mask from the position ids and examples attend to each other
        flat_kw = {k: flat[k] for k in ("position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")}
        seen.clear()
        loss_flat = model(input_ids=flat["input_ids"], labels=flat["labels"], use_cache=False, **flat_kw).loss
        lengths = [len(e["input_ids"]) for e in examples]
        if varlen:
            assert seen == lengths * model.config.num_hidden_layers
        # The same row without per-example positions attends across examples: a different loss,
        # so the equality above is a real check.
        loss_leaky = model(input_ids=flat["input_ids"], labels=flat["labels"], use_cache=False).loss
    assert torch.allclose(loss_padded, loss_flat, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(loss_padded, loss_leaky, atol=1e-4)


def test_causal_attention_math_equals_sdpa_with_gradients():
    """The short-example attention path gives sdpa's causal output and gradients (grouped-query
    heads: 6 query heads over 2 key/value heads)."""
    import torch
    import torch.nn.functional as F

    from cotshape.sft.cpu_kernels import causal_attention_math

    torch.manual_seed(0)
    q = torch.randn(1, 6, 11, 8, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 11, 8, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, 11, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(1, 11, 6, 8, dtype=torch.float64)

    def grads(out):
        return torch.autograd.grad(out, (q, k, v), g)

    ours = causal_attention_math(q, k, v, 0.3)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True).transpose(1, 2)
    assert ours.shape == ref.shape == (1, 11, 6, 8)
    assert torch.allclose(ours, ref, atol=1e-6)  # softmax in float32: float32 agreement
    for a, b in zip(grads(ours), grads(ref), strict=True):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("chunk, softcap", [(4096, None), (5, None), (4096, 3.0)],
                         ids=["one-chunk", "checkpointed-chunks", "softcap"])
def test_cpu_label_head_equals_trl_fused_head(tiny_model_dir, monkeypatch, chunk, softcap):
    """The CPU loss head gives TRL's fused-head outputs (loss, per-token log-probs, entropy,
    top-1 hits, label mask) and the same gradients, on a padding-free batch."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    from trl.trainer.utils import add_fused_lm_head

    import cotshape.sft.cpu_kernels as kernels

    monkeypatch.setattr(kernels, "LABEL_HEAD_CHUNK", chunk)
    tok = _tok(tiny_model_dir)
    examples = _labelled_examples(tok)
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(examples)
    assert (batch["labels"] != -100).sum() > 2 * 5  # several chunks on the chunked path

    def run(ours):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        if softcap:
            model.config.final_logit_softcapping = softcap
        add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
        if ours:
            assert use_cpu_label_head(model)
        out = model(**batch, use_cache=False, fused_lm_head=True)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, grads

    ref, ref_grads = run(False)
    got, got_grads = run(True)
    assert torch.allclose(got.loss, ref.loss, atol=1e-5)
    assert torch.equal(got.label_mask, ref.label_mask)
    assert torch.allclose(got.log_probs, ref.log_probs, atol=1e-5)
    assert torch.allclose(got.entropy, ref.entropy, atol=1e-4)
    assert torch.equal(got.is_top1, ref.is_top1)
    assert ref_grads.keys() == got_grads.keys()
    for name, g in ref_grads.items():
        assert torch.allclose(got_grads[name], g, atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("frozen", [True, False], ids=["frozen-head", "trained-head"])
def test_buffered_label_head_gives_the_autograd_bits_under_bf16_autocast(frozen):
    """The label head with its buffers (one autograd function: product, scores, backward) gives
    bit for bit what autograd computes for F.linear(...).float() and the scores, under bf16
    autocast, step after step with a changing number of positions (the buffers grow and are
    rewritten); the head's weight gradient too when it trains."""
    import torch

    from cotshape.sft.cpu_kernels import HeadBuffers, _label_head_function

    LabelScores, LabelHead = _label_head_function()
    buffers = HeadBuffers()
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1000, 24, generator=gen).requires_grad_(not frozen)
    for rows in (7, 300, 5, 301):  # grows past HeadBuffers.ROWS, then shrinks, then grows again
        hidden = torch.randn(rows, 24, generator=gen)
        labels = torch.randint(0, 1000, (rows,), generator=gen)
        outs = []
        for ours in (False, True):
            h = hidden.clone().requires_grad_()
            weight.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                if ours:
                    lp, ent, top1 = LabelHead.apply(h, weight, labels, buffers)
                else:
                    lp, ent, top1 = LabelScores.apply(torch.nn.functional.linear(h, weight).float(), labels)
            (lp * torch.linspace(-1, 1, rows)).sum().backward()
            outs.append((lp, ent, top1, h.grad, weight.grad))
        assert (outs[0][4] is None) == (outs[1][4] is None) == frozen  # a frozen head gets no gradient
        for ref, got in zip(*outs, strict=True):
            if ref is not None:
                assert torch.equal(ref, got)


def test_buffered_label_head_refuses_a_backward_after_another_forward():
    """Two forwards, then the first one's backward: its saved probabilities were overwritten,
    so autograd's in-place check raises instead of giving wrong gradients."""
    import torch

    from cotshape.sft.cpu_kernels import HeadBuffers, _label_head_function

    _, LabelHead = _label_head_function()
    buffers = HeadBuffers()
    weight, labels = torch.randn(50, 8), torch.tensor([1, 2, 3])
    first = LabelHead.apply(torch.randn(3, 8, requires_grad=True), weight, labels, buffers)[0]
    LabelHead.apply(torch.randn(3, 8, requires_grad=True), weight, labels, buffers)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.sum().backward()


def test_frozen_linears_in_bf16_give_the_same_autocast_outputs_and_adapter_grads(tiny_model_dir):
    """LoRA under bf16 autocast: storing the frozen Linear weights in bf16 (what autocast casts them
    to on every forward) and handing the adapters their input uncast change nothing, bit for bit;
    the tied head/embedding stay fp32."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from cotshape.sft.config import LORA_TARGET_MODULES
    from cotshape.sft.cpu_kernels import skip_lora_input_casts, store_frozen_linears_in

    ids = torch.tensor([[5, 9, 13, 2, 7, 11, 3, 4]])

    def run(cast):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        model.config.tie_word_embeddings = True
        model.tie_weights()
        peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGET_MODULES,
                                                task_type="CAUSAL_LM", init_lora_weights=False))
        if cast:
            assert skip_lora_input_casts(peft) == 7 * model.config.num_hidden_layers
            n = store_frozen_linears_in(peft, torch.bfloat16)
            layers = model.config.num_hidden_layers
            assert n == 7 * layers  # q/k/v/o and gate/up/down of each layer; not the tied head
            assert model.get_input_embeddings().weight.dtype == torch.float32
            assert all(p.dtype == torch.float32 for p in peft.parameters() if p.requires_grad)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = peft(input_ids=ids, labels=ids)
        out.loss.backward()
        return out.logits, {n: p.grad for n, p in peft.named_parameters() if p.requires_grad}

    ref_logits, ref_grads = run(False)
    logits, grads = run(True)
    assert torch.equal(logits, ref_logits)
    assert ref_grads.keys() == grads.keys() and ref_grads
    for name, g in ref_grads.items():
        assert torch.equal(grads[name], g), name


def test_reuse_freed_memory_applies_on_glibc():
    import platform

    from cotshape.sft.cpu_kernels import reuse_freed_memory

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert reuse_freed_memory() is glibc


def test_cpu_label_head_leaves_scaled_logit_models_to_trl(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.logit_scale = 0.5
    assert use_cpu_label_head(model) is False


# ---------------------------------------------------------------- training


def _params_equal(a, b) -> bool:
    import torch

    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_full_sft_changes_weights_and_reloads(tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "ckpt"
    metrics = train_sft(tiny_model_dir, RECORDS, out, SFTParams(method="full", **FAST))
    assert set(metrics) == {"train_loss", "first_loss", "final_loss", "steps", "train_tokens",
                            "tokens_per_second", "examples"}
    assert metrics["steps"] == 4 and metrics["examples"] == 3 and metrics["train_tokens"] > 0
    assert metrics["final_loss"] < metrics["first_loss"]
    trained = load_trained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not _params_equal(trained, base)
    log = json.loads((out / TRAIN_LOG).read_text())
    assert [e["step"] for e in log["log"]] == [1, 2, 3, 4]
    assert json.loads((out / MARKER).read_text())["merged"] is True
    assert _tok(out).chat_template  # tokenizer saved with its chat template
    assert json.loads((out / "config.json").read_text()).get("_attn_implementation") in (None, "sdpa")
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temp folder left behind


def test_lora_sft_saves_adapter_and_load_merges(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    train_sft(tiny_model_dir, RECORDS, out, SFTParams(method="lora", lora_r=4, lora_alpha=8, **FAST))
    assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    assert json.loads((out / MARKER).read_text())["merged"] is False
    merged = load_trained(out)
    assert not hasattr(merged, "peft_config")  # a plain transformers model
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged.state_dict()[q], base.state_dict()[q])
    assert torch.equal(merged.state_dict()["model.embed_tokens.weight"], base.state_dict()["model.embed_tokens.weight"])


def test_shared_lora_base_gives_each_run_the_weights_of_a_fresh_load(tiny_model_dir, tmp_path):
    """The evaluate stage merges every run's adapter into one LoraBase: after run 0 was merged
    (and decoded through the fused backend, which rebinds q/k/v as views), run 1 must get exactly
    the weights that a fresh load of the base merged with run 1's adapter gives."""
    import torch

    from cotshape.generation.transformers_backend import TransformersBackend
    from cotshape.sft.checkpoints import LoraBase

    runs = [tmp_path / f"run-{r}" for r in range(2)]
    for r, out in enumerate(runs):
        train_sft(tiny_model_dir, RECORDS, out, SFTParams(method="lora", lora_r=4, lora_alpha=8, **{**FAST, "seed": r}))
    shared = LoraBase(tiny_model_dir)
    first = load_trained(runs[0], shared_base=shared)
    TransformersBackend(tiny_model_dir, device="cpu", dtype="float32", model=first, tokenizer=_tok(tiny_model_dir))
    first_q = first.state_dict()["model.layers.0.self_attn.q_proj.weight"].clone()
    second = load_trained(runs[1], shared_base=shared)
    assert second is shared.model and not hasattr(second, "peft_config")
    fresh = load_trained(runs[1]).state_dict()
    got = second.state_dict()
    assert fresh.keys() == got.keys()
    for name, t in fresh.items():
        assert torch.equal(got[name], t), name
    assert not torch.equal(got["model.layers.0.self_attn.q_proj.weight"], first_q)  # the runs differ


def test_a_missing_lora_base_is_one_clear_error_offline(tiny_model_dir, tmp_path, monkeypatch):
    """Offline, an adapter whose recorded base folder is gone names the checkpoint and the base,
    whether the base is loaded per run (load_trained) or once for the set (LoraBase)."""
    from cotshape.sft.checkpoints import LoraBase

    out = tmp_path / "lora"
    train_sft(tiny_model_dir, RECORDS, out, SFTParams(method="lora", lora_r=4, lora_alpha=8, **FAST))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    gone = str(tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match=r"cotshape_sft\.json: base model .*gone.* not found"):
        load_trained(out, base_model=gone)
    with pytest.raises(FileNotFoundError, match=r"base model .*gone.* not found"):
        LoraBase(gone)


def test_runs_sharing_one_tokenizer_train_as_with_their_own(tiny_model_dir, tmp_path):
    from cotshape.sft.train import sft_tokenizer

    params = SFTParams(method="lora", lora_r=4, lora_alpha=8, **{**FAST, "seed": 1})
    own = train_sft(tiny_model_dir, RECORDS, tmp_path / "own", params)
    tok = sft_tokenizer(tiny_model_dir)
    train_sft(tiny_model_dir, RECORDS, tmp_path / "run-0", SFTParams(method="lora", lora_r=4, lora_alpha=8, **FAST),
              tokenizer=tok)
    shared = train_sft(tiny_model_dir, RECORDS, tmp_path / "run-1", params, tokenizer=tok)
    own.pop("tokens_per_second"), shared.pop("tokens_per_second")  # a timing
    assert shared == own and own["steps"] > 0


def test_one_example_trains_and_rerun_replaces_folder(tiny_model_dir, tmp_path):
    out = tmp_path / "one"
    out.mkdir()
    (out / "stale.txt").write_text("from an older run")
    metrics = train_sft(tiny_model_dir, RECORDS[:1], out, SFTParams(method="full", **FAST))
    assert metrics["examples"] == 1 and metrics["steps"] == 2
    assert not (out / "stale.txt").exists() and (out / MARKER).exists()


def test_empty_training_set_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        train_sft(tiny_model_dir, [], tmp_path / "x", SFTParams())
    assert not (tmp_path / "x").exists()


def test_launch_command():
    assert launch_command(SFTParams(), ["stages/sft.py", "--task", "gsm8k"])[1:] == ["stages/sft.py", "--task", "gsm8k"]
    cmd = launch_command(SFTParams(launcher="fsdp", num_processes=4, num_machines=2), ["s.py"], "cfg")
    assert cmd == ["accelerate", "launch", "--config_file", "cfg/fsdp.yaml", "--num_processes", "4",
                   "--num_machines", "2", "s.py"]


# ---------------------------------------------------------------- effective batch, precision, checkpoints (#11)


def test_grad_accum_auto_reaches_the_effective_batch():
    p = SFTParams(batch_size=4, grad_accum="auto", effective_batch_size=64, launcher="fsdp", num_processes=4)
    assert p.grad_accum == 4 and p.sequences_per_step == 64
    # accelerate's --num_processes counts the processes of all machines: 2 machines x 4 GPUs = 8
    p = SFTParams(batch_size=4, grad_accum="auto", effective_batch_size=64, launcher="fsdp", num_processes=8,
                  num_machines=2)
    assert p.grad_accum == 2


@pytest.mark.parametrize(
    "kw, keys",
    [({"batch_size": 4, "grad_accum": 16, "effective_batch_size": 64, "launcher": "ddp", "num_processes": 4},
      ["sft.grad_accum", "sft.effective_batch_size", "sft.num_processes"]),
     ({"batch_size": 3, "grad_accum": "auto", "effective_batch_size": 64}, ["sft.grad_accum", "sft.batch_size"]),
     ({"grad_accum": "auto"}, ["sft.grad_accum", "sft.effective_batch_size"]),
     ({"precision": "bf16", "dtype": "float32"}, ["sft.precision", "sft.dtype"]),
     ({"precision": "fp8"}, ["sft.precision"]),
     ({"save_steps": [0]}, ["sft.save_steps"]),
     ({"save_steps": [3, 3]}, ["sft.save_steps"]),
     ({"save_steps": [5], "max_steps": 4}, ["sft.save_steps", "sft.max_steps"])],
)
def test_batch_precision_and_save_steps_mistakes_name_the_keys(kw, keys):
    with pytest.raises(ValueError) as e:
        SFTParams(**kw)
    assert all(k in str(e.value) for k in keys), str(e.value)


def test_batch_mismatch_on_purpose_is_kept():
    p = SFTParams(batch_size=4, grad_accum=16, effective_batch_size=None, launcher="ddp", num_processes=4)
    assert p.grad_accum == 16 and p.sequences_per_step == 256
    assert SFTParams(batch_size=4, grad_accum=16, launcher="ddp", num_processes=4).sequences_per_step == 256


def test_params_file_mismatch_is_a_params_error_naming_the_file_and_key():
    from cotshape.core.config import ParamsError, validate_params

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sft"].update(effective_batch_size=64, grad_accum=1)
    with pytest.raises(ParamsError, match=r"^exp\.yaml: sft\.grad_accum: .*sft\.effective_batch_size=64"):
        validate_params(params, source="exp.yaml")
    params["sft"]["grad_accum"] = "auto"
    assert validate_params(params).sft.grad_accum == 64 // params["sft"]["batch_size"]


def _saved_dtypes(folder: Path) -> set[str]:
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        return {str(f.get_slice(k).get_dtype()) for k in f.keys()}


def test_bf16_precision_trains_bf16_weights(tiny_model_dir, tmp_path):
    import math

    import torch
    from transformers import TrainerCallback

    seen: list[torch.dtype] = []

    class WeightDtype(TrainerCallback):  # the dtype of the weights the optimizer updates, during training
        def on_step_end(self, args, state, control, model=None, **kwargs):
            seen.append(next(model.parameters()).dtype)

    out = tmp_path / "bf16"
    params = SFTParams(method="full", **{**FAST, "dtype": "auto"}, precision="bf16")
    metrics = train_sft(tiny_model_dir, RECORDS, out, params, callbacks=[WeightDtype()])
    assert seen == [torch.bfloat16] * metrics["steps"] and metrics["steps"] == 4
    assert all(math.isfinite(metrics[k]) for k in ("first_loss", "final_loss", "train_loss"))
    assert _saved_dtypes(out) == {"BF16"}
    assert json.loads((out / TRAIN_LOG).read_text())["precision"] == "bf16"
    # amp (the default) keeps fp32 master weights
    train_sft(tiny_model_dir, RECORDS, tmp_path / "amp", SFTParams(method="full", **FAST))
    assert _saved_dtypes(tmp_path / "amp") == {"F32"}


def test_save_steps_write_loadable_checkpoints(tiny_model_dir, tmp_path):
    import torch

    from cotshape.sft.checkpoints import checkpoint_dir

    out = tmp_path / "ckpt"
    metrics = train_sft(tiny_model_dir, RECORDS, out, SFTParams(method="full", **FAST, save_steps=[1, 2]))
    assert metrics["steps"] == 4
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1", "step-2"]
    assert json.loads((out / TRAIN_LOG).read_text())["checkpoints"] == ["checkpoints/step-1", "checkpoints/step-2"]
    models = {}
    for step in (1, 2):
        folder = checkpoint_dir(out, step)
        marker = json.loads((folder / MARKER).read_text())
        assert marker["step"] == step and marker["merged"] is True
        assert _tok(folder).chat_template
        # saved with the model's own attention, not the padding-free kernel registered for training
        assert json.loads((folder / "config.json").read_text()).get("_attn_implementation") in (None, "sdpa")
        assert not (folder / "training_args.bin").exists()
        models[step] = load_trained(folder)
    final = load_trained(out)
    w = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(models[1].state_dict()[w], models[2].state_dict()[w])
    assert not torch.equal(models[2].state_dict()[w], final.state_dict()[w])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_lora_checkpoint_is_an_adapter_that_load_trained_merges(tiny_model_dir, tmp_path):
    from cotshape.sft.checkpoints import checkpoint_dir

    out = tmp_path / "lora"
    train_sft(tiny_model_dir, RECORDS, out, SFTParams(method="lora", lora_r=4, lora_alpha=8, **FAST, save_steps=[2]))
    folder = checkpoint_dir(out, 2)
    assert (folder / "adapter_config.json").exists() and not (folder / "model.safetensors").exists()
    assert not hasattr(load_trained(folder), "peft_config")


def test_save_step_after_the_last_step_is_recorded_as_not_reached(tiny_model_dir, tmp_path):
    from cotshape.pipeline.stage import SKIPPED
    from cotshape.sft.checkpoints import checkpoint_dir

    out = tmp_path / "late"
    train_sft(tiny_model_dir, RECORDS, out, SFTParams(method="full", **FAST, save_steps=[2, 50]))
    assert (checkpoint_dir(out, 2) / MARKER).exists()
    late = checkpoint_dir(out, 50)
    assert [p.name for p in late.iterdir()] == [SKIPPED]
    assert "ended after 4 optimizer steps" in json.loads((late / SKIPPED).read_text())["reason"]
    assert json.loads((out / TRAIN_LOG).read_text())["checkpoints_not_reached"] == [50]


@pytest.mark.slow  # about 30 s on 2 shared cores: one SFT run and three evaluate stage processes
def test_evaluate_stage_loads_a_checkpoint(tiny_model_dir, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "sft" / "gsm8k-H"
    train_sft(tiny_model_dir, RECORDS, out, SFTParams(method="full", **FAST, save_steps=[2, 9]))
    problems = tmp_path / "test.jsonl"
    problems.write_text("".join(json.dumps({"id": f"t{i}", "task": "gsm8k", "question": q, "answer": a,
                                            "solution": f"#### {a}", "tests": [], "meta": {}}) + "\n"
                                for i, (q, a) in enumerate([("What is 1 + 1?", "2"), ("What is 2 + 2?", "4")])))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["base"].update(device="cpu", dtype="float32", student=str(tiny_model_dir))
    params["evaluate"].update(max_new_tokens=4, batch_size=2)
    params["tracking"]["tracking_uri"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    env = dict(os.environ, COTSHAPE_PARAMS=str(tmp_path / "params.yaml"), HF_HUB_OFFLINE="1")

    def run(checkpoint: str, name: str):
        return subprocess.run(
            [sys.executable, str(REPO / "stages" / "evaluate.py"), "--task", "gsm8k", "--set", "H",
             "--problems", str(problems), "--model", str(out), "--checkpoint", checkpoint,
             "--out", str(tmp_path / f"{name}.jsonl"), "--metrics", str(tmp_path / f"{name}.json")],
            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)

    proc = run("step-2", "ck")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "ck.json").read_text())["n"] == 2
    assert len((tmp_path / "ck.jsonl").read_text().splitlines()) == 2
    proc = run("9", "late")  # listed in save_steps, but the run ended at step 4
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "late.json").read_text()) == {"n": 0, "skipped": 1}
    proc = run("step-3", "missing")
    assert proc.returncode == 2 and "no such checkpoint (has: step-2, step-9)" in proc.stderr, proc.stderr[-3000:]
