"""Shared fixtures. Nothing here touches the network: HF_HUB_OFFLINE is forced on."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_TRACKING_URI", "sqlite:///" + os.path.join(os.environ.get("TMPDIR", "/tmp"), "cotshape-test-mlflow.db"))

import pytest  # noqa: E402


def build_tiny_model(path, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A tiny random Llama with the real SmolLM2 tokenizer and chat template, saved to ``path``.

    Random weights, so its text is gibberish, but every code path (chat template, EOS, left
    padding, LoRA target modules, saving and reloading) is the real one.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from cotshape.core.models import load_gguf_tokenizer

    tok = load_gguf_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Path to a tiny random Llama HF folder (built once per test session)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama") / "model")
