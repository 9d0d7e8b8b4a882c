"""The library internals cotshape patches, checked by name: when TRL or transformers move one,
this fails with a message that says what moved and where cotshape uses it (instead of a
confusing error deep inside a training or generation run). pyproject.toml bounds both
libraries; raise a bound only after this file passes on the new version."""

from __future__ import annotations

import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).parent.parent / "pyproject.toml"


def _requirement(name: str) -> Requirement:
    text = PYPROJECT.read_text()
    for line in re.findall(r'^\s*"([^"]+)",', text, flags=re.M):
        req = Requirement(line)
        if req.name == name:
            return req
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


@pytest.mark.parametrize("name", ["trl", "transformers"])
def test_patched_libraries_have_an_upper_bound_that_the_installed_version_meets(name):
    req = _requirement(name)
    assert any(s.operator in ("<", "<=", "~=", "==") for s in req.specifier), \
        f"{name}: cotshape patches its internals, so pyproject.toml must bound it from above ({req})"
    assert req.specifier.contains(version(name), prereleases=True), \
        f"installed {name} {version(name)} is outside pyproject.toml's {req}"


def _moved(what: str, where: str) -> str:
    return (f"TRL/transformers moved {what}, which {where} relies on; adapt it there (and this test) "
            f"before raising the bound in pyproject.toml")


def test_trl_fused_lm_head_internals():
    """cotshape/sft/cpu_kernels.py (use_cpu_label_head) and cotshape/sft/closeness.py replace TRL's fused LM head
    forward and return its output type."""
    utils = pytest.importorskip("trl.trainer.utils")
    assert hasattr(utils, "add_fused_lm_head"), _moved("trl.trainer.utils.add_fused_lm_head", "cotshape/sft/closeness.py")
    assert "model" in inspect.signature(utils.add_fused_lm_head).parameters
    out = getattr(utils, "FusedCausalLMOutput", None)
    assert out is not None, _moved("trl.trainer.utils.FusedCausalLMOutput", "cotshape/sft/cpu_kernels.py use_cpu_label_head")
    fields = set(getattr(out, "__dataclass_fields__", {}))
    missing = {"loss", "log_probs", "entropy", "is_top1", "label_mask"} - fields
    assert not missing, _moved(f"FusedCausalLMOutput fields {sorted(missing)}", "cotshape/sft/cpu_kernels.py use_cpu_label_head")
    src = inspect.getsource(utils.add_fused_lm_head)
    for kw in ("fused_lm_head", "shift_labels", "num_items_in_batch"):
        assert kw in src, _moved(f"the fused forward's keyword {kw!r}", "cotshape/sft/cpu_kernels.py use_cpu_label_head")


def test_trl_sft_trainer_internals():
    from trl import SFTConfig, SFTTrainer

    src = inspect.getsource(SFTTrainer)
    assert "fused_lm_head" in src, _moved("SFTTrainer's call with fused_lm_head=True", "cotshape/sft/train.py")
    assert "_total_train_tokens" in src, _moved("SFTTrainer._total_train_tokens", "cotshape/sft/train.py (train_tokens)")
    fields = set(SFTConfig.__dataclass_fields__)
    for key in ("padding_free", "completion_only_loss", "max_length", "bf16", "use_cpu"):
        assert key in fields, _moved(f"SFTConfig.{key}", "cotshape/sft/config.py build_sft_config")


def test_transformers_generation_internals():
    """cotshape/generation/transformers_backend.py: its own attention and KV-cache layer."""
    from transformers import AttentionInterface, DynamicCache, cache_utils, masking_utils

    assert hasattr(AttentionInterface, "register"), _moved("AttentionInterface.register", "the transformers backend")
    assert hasattr(masking_utils, "AttentionMaskInterface") and hasattr(masking_utils, "sdpa_mask"), \
        _moved("masking_utils.AttentionMaskInterface / sdpa_mask", "the transformers backend")
    layer = getattr(cache_utils, "DynamicLayer", None)
    assert layer is not None, _moved("cache_utils.DynamicLayer", "the transformers backend (_slab_layer_class)")
    for method in ("update", "get_seq_length", "batch_select_indices"):
        assert hasattr(layer, method), _moved(f"DynamicLayer.{method}", "the transformers backend (SlabLayer)")
    assert "layers" in inspect.getsource(DynamicCache.__init__) or hasattr(DynamicCache(), "layers"), \
        _moved("DynamicCache.layers", "the transformers backend (slab_cache)")
