"""accelerate configs: each parses with accelerate's own loader, and the sft stage's launch
command for each launcher is what `accelerate launch` accepts and resolves to the intended
distributed setup (accelerate's own parser, validation and env preparation; no GPU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "accelerate"
LAUNCHERS = ("ddp", "fsdp", "deepspeed")


def _launch(params_kw: dict, monkeypatch):
    """Parse and validate the sft launch command exactly as `accelerate launch` would."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from cotshape.sft.train import SFTParams, launch_command

    monkeypatch.chdir(ROOT)  # configs are referenced relative to the repo root, as dvc runs stages
    cmd = launch_command(SFTParams(**params_kw), ["stages/sft.py", "--out", "models/x"])
    assert cmd[:2] == ["accelerate", "launch"]
    args = launch_command_parser().parse_args(cmd[2:])
    _validate_launch_command(args)
    return cmd, args


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_parses_with_accelerates_loader(path):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    cfg = load_config_from_file(str(path))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.mixed_precision == "bf16"


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_a_config_exists_for_every_launcher_param(launcher):
    assert (CONFIGS / f"{launcher}.yaml").is_file()


def test_ddp_launch_command_resolves_to_multi_gpu(monkeypatch):
    from accelerate.utils.launch import prepare_multi_gpu_env

    _, args = _launch({"method": "full", "launcher": "ddp", "num_processes": 8}, monkeypatch)
    assert args.multi_gpu and not args.use_fsdp and not args.use_deepspeed
    assert (args.num_processes, args.num_machines) == (8, 1)
    assert args.training_script == "stages/sft.py"
    assert args.training_script_args == ["--out", "models/x"]
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert args.nproc_per_node == "8"


def test_fsdp_launch_command_resolves_to_full_shard_transformer_wrap(monkeypatch):
    from accelerate.utils.launch import prepare_multi_gpu_env

    _, args = _launch({"method": "full", "launcher": "fsdp", "num_processes": 4}, monkeypatch)
    assert args.use_fsdp
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true"
    assert env["FSDP_SHARDING_STRATEGY"] == "FULL_SHARD"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_STATE_DICT_TYPE"] == "FULL_STATE_DICT"
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert args.nproc_per_node == "4"


def test_deepspeed_launch_command_resolves_to_zero3_with_its_json(monkeypatch):
    import json

    _, args = _launch({"method": "full", "launcher": "deepspeed", "num_processes": 8}, monkeypatch)
    assert args.use_deepspeed
    ds_file = ROOT / args.deepspeed_config_file
    ds = json.loads(ds_file.read_text())
    assert ds["zero_optimization"]["stage"] == 3
    # "auto": the HF Trainer fills these from the SFT params, so they cannot disagree
    assert ds["gradient_accumulation_steps"] == ds["train_micro_batch_size_per_gpu"] == "auto"
    assert args.zero3_init_flag is True


def test_multi_node_command_overrides_the_config_machine_count(monkeypatch):
    from accelerate.utils.launch import prepare_multi_gpu_env

    _, args = _launch({"method": "full", "launcher": "fsdp", "num_processes": 16, "num_machines": 2}, monkeypatch)
    args.main_process_ip, args.machine_rank = "10.1.2.3", 1  # what the Slurm script adds per node
    prepare_multi_gpu_env(args)
    assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("2", "8", 1)


@pytest.mark.parametrize("name", ["fsdp_multinode.yaml", "ddp_multinode.yaml"])
def test_multinode_example_configs_use_c10d_rendezvous(name):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(CONFIGS / name))
    assert cfg.num_machines == 2 and cfg.num_processes == 16
    assert cfg.rdzv_backend == "c10d"


@pytest.mark.slow  # ~60 s on 2 loaded CPU cores (tiny model, TRL trainer start-up dominates)
def test_gpu_check_cpu_smoke_mode_runs_every_step_and_prints_the_table(tmp_path):
    # bench/gpu_check.sh is the prepared single-GPU check; --device cpu --tiny is its CI form
    import json
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tail = proc.stdout.split("cotshape GPU check")[-1]
    for row in ("generation", "sft", "evaluate"):
        assert any(line.startswith(row) and "FAILED" not in line for line in tail.splitlines()), tail
    results = json.loads((tmp_path / "gpu_check.json").read_text())["results"]
    assert results["generation"]["tokens"] > 0
    assert results["sft"]["steps"] == 2 and results["sft"]["tokens_per_s"] > 0
    assert results["evaluate"]["problems"] == 4
