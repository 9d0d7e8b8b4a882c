"""accelerate configs: each parses with accelerate's own loader, and the sft stage's launch
command for each launcher is what `accelerate launch` accepts and resolves to the intended
distributed setup (accelerate's own parser, validation and env preparation; no GPU needed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "configs" / "accelerate"
LAUNCHERS = ("ddp", "fsdp", "deepspeed")


def _launch(params_kw: dict, monkeypatch):
    """Parse and validate the sft launch command exactly as `accelerate launch` would."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    from cotshape.sft.params import SFTParams
    from cotshape.sft.train import launch_command

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


# ---- two processes for real: DDP over gloo on CPU ----------------------------------------------

def _stage_command(workdir: Path, out: str, sft: dict, model: Path, data: Path) -> tuple[list[str], dict]:
    """The sft stage's command line and environment in ``workdir``, with its own params.yaml."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(device="cpu", dtype="float32", prompt_format="chat")  # no --problems here (plain needs them)
    params["sft"].update(sft)
    (workdir / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               MLFLOW_TRACKING_URI=f"sqlite:///{workdir}/mlflow.db",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    cmd = [sys.executable, "stages/sft.py", "--task", "countdown", "--set", "H", "--data", str(data),
           "--student", str(model), "--out", out, "--metrics", f"{out}.json", "--loss-plot", f"{out}.csv"]
    return cmd, env


def _sft_stage(workdir: Path, out: str, sft: dict, model: Path, data: Path) -> subprocess.CompletedProcess:
    cmd, env = _stage_command(workdir, out, sft, model, data)
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _stage_workdir(workdir: Path) -> Path:
    """``workdir`` with the stage scripts and accelerate configs; returns its training set (8 rows)."""
    import json

    shutil.copytree(ROOT / "stages", workdir / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "configs", workdir / "configs")
    data = workdir / "H.jsonl"
    rows = [{"id": f"p{i}", "problem_id": f"p{i}", "task": "countdown", "set": "H",
             "prompt": [{"role": "user", "content": f"Make {i + 10} from [{i}, 10]."}],
             "completion": f"{i} + 10 = {i + 10}. <answer>{i} + 10</answer>"} for i in range(8)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return data


@pytest.mark.parametrize("launcher, line", [
    ("fsdp", "error: sft.launcher: fsdp needs CUDA (torch FSDP cannot initialise its parameters on CPU: "
             "sync_module_states is not supported there); use sft.launcher: ddp on CPU"),
    ("deepspeed", "error: sft.launcher: deepspeed needs CUDA"),
])
def test_the_stage_refuses_a_launcher_cpu_cannot_run_in_one_line_before_loading(tmp_path, launcher, line):
    """On CPU the sft stage refuses fsdp and deepspeed with one line and exit code 2, before it
    reads its training set (here: none at all) or loads a model (none either): no traceback, no
    `accelerate launch`, no output folder."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: fsdp/deepspeed are not refused here")
    shutil.copytree(ROOT / "stages", tmp_path / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    cmd, env = _stage_command(tmp_path, "out", {"launcher": launcher, "num_processes": 2},
                              tmp_path / "no-model", tmp_path / "no-data.jsonl")
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-4000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.json").exists()


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _rank_pid(root: int, rank: int) -> int | None:
    """The process below ``root`` whose environment says ``RANK=<rank>`` (a torchrun worker)."""
    for pid in _descendants(root):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    return None


@pytest.mark.slow  # about 40 s: one two-process SFT stage, killed after its first logged step
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the rank's process in /proc")
def test_a_killed_rank_fails_the_stage_with_one_line_and_no_model_folder(tmp_path, tiny_model_dir):
    """SIGKILL of rank 1 of a 2-process DDP stage after its first logged step: accelerate's
    launcher stops rank 0, and the stage exits non-zero with one ``error:`` line naming the
    launcher, leaving no model folder (nor its temp folder), no metrics and no loss CSV."""
    import signal
    import threading
    import time

    data = _stage_workdir(tmp_path)
    # 8 examples x 100 epochs / 4 per optimizer step: 200 steps, far more than the kill needs
    cmd, env = _stage_command(tmp_path, "two", {
        "runs": 1, "runs_by_set": {}, "epochs": 100, "batch_size": 2, "grad_accum": 1, "learning_rate": 1e-2, "warmup_ratio": 0.0,
        "save_steps": [], "max_length": 128, "logging_steps": 1, "launcher": "ddp", "num_processes": 2,
    }, tiny_model_dir, data)
    env["PYTHONUNBUFFERED"] = "1"  # rank 0's step log reaches the pipe as it is written
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    out_lines: list[str] = []
    err_lines: list[str] = []
    logged = threading.Event()

    def drain(stream, lines):
        for line in stream:
            lines.append(line)
            if "'loss'" in line:
                logged.set()

    readers = [threading.Thread(target=drain, args=(s, lines), daemon=True)
               for s, lines in ((proc.stdout, out_lines), (proc.stderr, err_lines))]
    for t in readers:
        t.start()
    try:
        assert logged.wait(300), "".join(err_lines)[-4000:]
        rank1 = None
        for _ in range(50):
            rank1 = _rank_pid(proc.pid, 1)
            if rank1 is not None:
                break
            time.sleep(0.1)
        assert rank1 is not None, "no process with RANK=1 below the stage"
        os.kill(rank1, signal.SIGKILL)
        code = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for t in readers:
        t.join(timeout=10)
    stderr = "".join(err_lines)
    assert code != 0, stderr[-4000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr[-4000:]
    assert errors[0].startswith("error: sft.launcher: ddp: `accelerate launch` of 2 processes failed (exit code ")
    assert "removed the unfinished two" in errors[0]
    assert not (tmp_path / "two").exists(), sorted(p.name for p in (tmp_path / "two").rglob("*"))
    assert not (tmp_path / "two.json").exists() and not (tmp_path / "two.csv").exists()
    assert sum("countdown-H run 0" in line for line in out_lines) == 0  # rank 0 never finished a run


@pytest.mark.slow  # about 40 s: two SFT stages on the tiny model, one of them two processes
def test_ddp_two_cpu_processes_train_like_one_with_the_same_effective_batch(tmp_path, tiny_model_dir):
    """`sft.launcher: ddp`, `sft.num_processes: 2` runs through `accelerate launch` on CPU (gloo).
    Against one process with the same effective batch (2 per device x 2 processes = 2 x grad_accum
    2), accelerate hands each rank every other batch of the one-process order, so the optimizer
    sees the same examples per step: the first loss and the trained adapter agree within float
    tolerance (reduction order), while training moved the adapter far more than that. Only rank 0
    writes: one model folder, one metrics file, one loss CSV, one MLflow run."""
    import json

    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    data = _stage_workdir(tmp_path)
    common = {"runs": 1, "runs_by_set": {}, "epochs": 3, "batch_size": 2, "learning_rate": 1e-2, "warmup_ratio": 0.0,
              "save_steps": [], "max_length": 128}
    _sft_stage(tmp_path, "one", {**common, "grad_accum": 2}, tiny_model_dir, data)
    two = _sft_stage(tmp_path, "two", {**common, "launcher": "ddp", "num_processes": 2, "grad_accum": 1},
                     tiny_model_dir, data)
    assert "accelerate launch --config_file configs/accelerate/ddp.yaml --num_processes 2" in two.stderr

    m1, m2 = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert m1["steps"] == m2["steps"] == 6  # 8 examples x 3 epochs / 4 per optimizer step
    assert m2["first_loss"] == pytest.approx(m1["first_loss"], rel=1e-3)
    assert m2["final_loss"] == pytest.approx(m1["final_loss"], rel=1e-2)
    w1, w2 = (load_file(tmp_path / n / "run-0" / "adapter_model.safetensors") for n in ("one", "two"))
    # LoRA's B starts at zero: its size after training is how far training moved it
    moved = max(w1[k].abs().max().item() for k in w1 if "lora_B" in k)
    diff = max((w1[k] - w2[k]).abs().max().item() for k in w1)
    print(f"1 vs 2 processes: first loss {m1['first_loss']:.6f} vs {m2['first_loss']:.6f}, final "
          f"{m1['final_loss']:.6f} vs {m2['final_loss']:.6f}; adapter max |diff| {diff:.2e}, lora_B moved {moved:.2e}")
    assert moved > 1e-2 and diff < 0.02 * moved, (moved, diff)

    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["run-0"]
    assert sorted(p.name for p in (tmp_path / "two" / "run-0").iterdir()) == \
        sorted(p.name for p in (tmp_path / "one" / "run-0").iterdir())
    assert (tmp_path / "two.csv").is_file() and two.stdout.count("countdown-H run 0") == 1
    logs = [json.loads((tmp_path / n / "run-0" / "train_log.json").read_text()) for n in ("one", "two")]
    assert [(g["distributed_type"], g["num_processes"]) for g in logs] == [("NO", 1), ("MULTI_CPU", 2)]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cotshape").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["sft@countdown-H-run-0"] * 2  # one per stage
