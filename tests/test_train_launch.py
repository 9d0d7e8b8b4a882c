"""The launchers SFT refuses up front (cotshape.sft.train.check_launcher): fsdp without CUDA,
deepspeed without its package or without CUDA; one line naming ``sft.launcher``, the reason and
what to use instead. The machine's answers (CUDA, deepspeed installed) are passed in, so each case
runs on any machine."""

from __future__ import annotations

import pytest

from cotshape.core.errors import StageError
from cotshape.sft.params import SFTParams
from cotshape.sft.train import check_launcher


def _refusal(launcher: str, cuda: bool, deepspeed_installed: bool) -> str:
    with pytest.raises(StageError) as err:
        check_launcher(SFTParams(launcher=launcher, num_processes=2), cuda=cuda,
                       deepspeed_installed=deepspeed_installed)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"sft.launcher: {launcher} ")
    return message


@pytest.mark.parametrize("launcher", ["none", "ddp"])
@pytest.mark.parametrize("cuda", [False, True])
def test_none_and_ddp_run_anywhere(launcher, cuda):
    num_processes = 1 if launcher == "none" else 2
    check_launcher(SFTParams(launcher=launcher, num_processes=num_processes), cuda=cuda, deepspeed_installed=False)


def test_fsdp_without_cuda_is_refused_pointing_to_ddp():
    assert _refusal("fsdp", cuda=False, deepspeed_installed=True) == (
        "sft.launcher: fsdp needs CUDA (torch FSDP cannot initialise its parameters on CPU: "
        "sync_module_states is not supported there); use sft.launcher: ddp on CPU")


def test_fsdp_with_cuda_is_let_through():
    check_launcher(SFTParams(launcher="fsdp", num_processes=2), cuda=True, deepspeed_installed=False)


def test_deepspeed_not_installed_says_to_install_it():
    assert _refusal("deepspeed", cuda=True, deepspeed_installed=False) == (
        "sft.launcher: deepspeed needs the deepspeed package, which is not installed: "
        "pip install 'cotshape[deepspeed]' (or use sft.launcher: ddp or fsdp)")


def test_deepspeed_on_cpu_is_refused_pointing_to_ddp():
    assert _refusal("deepspeed", cuda=False, deepspeed_installed=True) == (
        "sft.launcher: deepspeed needs CUDA (ZeRO-3 in configs/accelerate/deepspeed.yaml runs on GPUs); "
        "use sft.launcher: ddp on CPU")
    assert _refusal("deepspeed", cuda=False, deepspeed_installed=False) == (
        "sft.launcher: deepspeed needs CUDA and the deepspeed package (not installed); use sft.launcher: ddp on CPU")


def test_deepspeed_with_cuda_and_the_package_is_let_through():
    check_launcher(SFTParams(launcher="deepspeed", num_processes=2), cuda=True, deepspeed_installed=True)


def test_this_machine_is_asked_when_not_told(monkeypatch):
    """Without ``cuda``/``deepspeed_installed``, torch and the installed packages answer."""
    import importlib.util

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "deepspeed" else real_find_spec(name, *a))
    with pytest.raises(StageError, match="fsdp needs CUDA"):
        check_launcher(SFTParams(launcher="fsdp", num_processes=2))
    with pytest.raises(StageError, match="deepspeed needs CUDA and the deepspeed package"):
        check_launcher(SFTParams(launcher="deepspeed", num_processes=2))
