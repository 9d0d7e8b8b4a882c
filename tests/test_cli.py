"""The ``cotshape`` command line: tasks, sample (incl. a kill -9 and resume), verify, errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT

from cotshape.cli import main
from cotshape.core.records import make_problem, read_jsonl, write_jsonl


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cotshape.cli", *args], capture_output=True, text=True, timeout=300)


def test_tasks_list(capsys):
    assert main(["tasks", "list"]) == 0
    assert "gsm8k" in capsys.readouterr().out.split()


def test_tasks_show_prints_n_problems(capsys):
    import json

    assert main(["tasks", "show", "gsm8k", "--source", "offline", "-n", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and json.loads(lines[0])["task"] == "gsm8k"


def test_unknown_task_is_one_error_line():
    r = run_cli("tasks", "show", "gsm8kk")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith("error: unknown task 'gsm8kk'")
    assert "Traceback" not in r.stderr


@pytest.fixture
def problems_file(tmp_path):
    path = tmp_path / "problems.jsonl"
    write_jsonl(path, [make_problem(f"g{i}", "gsm8k", f"Tom has {i} apples and buys {i + 2} more. How many now?",
                                    str(2 * i + 2), f"{i} + {i + 2} = {2 * i + 2}\n#### {2 * i + 2}") for i in range(12)])
    return path


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--model", "no-such-alias"], "error: unknown model spec 'no-such-alias'"),
        (["--k", "0"], "error: --k: must be >= 1"),
        (["--shard", "3/2"], "error: shard must satisfy"),
        # checked like the params keys they mirror, before any model is looked at
        (["--temperature", "nan"], "error: --temperature: must be a finite number, got nan"),
        (["--temperature", "inf"], "error: --temperature: must be a finite number, got inf"),
        (["--top-p", "nan"], "error: --top-p: must be a finite number"),
        (["--temperature", "0", "--k", "4"], "error: --k: greedy sampling (--temperature 0) gives 4 identical samples"),
        (["--k", "1000000000000"], "error: --k: must be <= 1024"),
        (["--seed", "-1"], "error: --seed: must be >= 0"),
        (["--seed", "4294967296"], "error: --seed: must be <= 4294967295"),
        (["--max-new-tokens", "1000000000"], "error: --max-new-tokens: must be <= "),
        (["--batch-size", "0"], "error: --batch-size: must be >= 1"),
        # enum options: click refuses them while parsing (its wording, the option and the choices)
        (["--backend", "vlm"], "error: Invalid value for '--backend': Value error, 'vlm' is not one of 'transformers', 'vllm'"),
        (["--device", "tpu"], "error: --device: must be one of auto, cpu, cuda"),
        (["--dtype", "fp8"], "error: Invalid value for '--dtype': Value error, 'fp8' is not one of 'auto', 'float32'"),
        (["--chunk-size", "0"], "error: --chunk-size: must be >= 1"),
        (["--limit", "0"], "error: --limit: must be >= 1"),
    ],
)
def test_sample_bad_arguments(problems_file, tmp_path, capsys, extra, match):
    args = ["sample", "--task", "gsm8k", "--problems", str(problems_file), "--model", "org/x",
            "--out", str(tmp_path / "o.jsonl"), *extra]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(match)
    assert not (tmp_path / "o.jsonl").exists()


def test_sample_empty_problem_file(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "empty.jsonl").write_text("")
    args = ["sample", "--task", "gsm8k", "--problems", str(tmp_path / "empty.jsonl"), "--model", str(tiny_model_dir),
            "--out", str(tmp_path / "o.jsonl")]
    assert main(args) == 2
    assert "no problems to sample" in capsys.readouterr().err


def test_sample_bad_shots(problems_file, tiny_model_dir, tmp_path, capsys):
    args = ["sample", "--task", "gsm8k", "--problems", str(problems_file), "--model", str(tiny_model_dir),
            "--out", str(tmp_path / "o.jsonl"), "--shots", "99", "--device", "cpu"]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("error: sample.shots: task 'gsm8k' has ")
    assert not (tmp_path / "o.jsonl").exists()


def test_sample_malformed_problem_file(tmp_path, tiny_model_dir, capsys):
    (tmp_path / "bad.jsonl").write_text('{"id": "x"}\n')
    args = ["sample", "--task", "gsm8k", "--problems", str(tmp_path / "bad.jsonl"), "--model", str(tiny_model_dir),
            "--out", str(tmp_path / "o.jsonl")]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'bad.jsonl'}:1: missing field")


def test_sample_then_verify(problems_file, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "samples.jsonl"
    args = ["sample", "--task", "gsm8k", "--problems", str(problems_file), "--model", str(tiny_model_dir), "--k", "2",
            "--max-new-tokens", "6", "--temperature", "1.0", "--seed", "1", "--out", str(out), "--limit", "3",
            "--dtype", "float32", "--device", "cpu"]
    assert main(args) == 0
    recs = read_jsonl(out)
    assert [r["id"] for r in recs] == ["g0#0", "g0#1", "g1#0", "g1#1", "g2#0", "g2#1"]
    assert recs[0]["teacher"] == str(tiny_model_dir)
    verified = tmp_path / "verified.jsonl"
    assert main(["verify", "--task", "gsm8k", "--problems", str(problems_file), "--in", str(out),
                 "--out", str(verified)]) == 0
    assert all(r["correct"] is False and "parsed" in r for r in read_jsonl(verified))


@pytest.mark.slow
def test_sample_killed_with_sigkill_resumes_without_loss(problems_file, tiny_model_dir, tmp_path):
    """kill -9 mid-run, rerun: the same (problem_id, sample_index) set as an uninterrupted run,
    no duplicates, and the records written before the kill unchanged."""
    common = ["sample", "--task", "gsm8k", "--problems", str(problems_file), "--model", str(tiny_model_dir),
              "--k", "3", "--max-new-tokens", "24", "--temperature", "1.0", "--seed", "5", "--batch-size", "3",
              "--dtype", "float32", "--device", "cpu"]
    ref = tmp_path / "ref.jsonl"
    assert run_cli(*common, "--out", str(ref)).returncode == 0

    out = tmp_path / "out.jsonl"
    part = tmp_path / "out.jsonl.partial"
    proc = subprocess.Popen([sys.executable, "-m", "cotshape.cli", *common, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if part.exists() and len(part.read_text().splitlines()) >= 1 + 3 * 3:  # header + 3 problems
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    before = [line for line in part.read_text().splitlines()[1:]]
    r = run_cli(*common, "--out", str(out))
    assert r.returncode == 0, r.stderr
    final = read_jsonl(out)
    keys = [(x["problem_id"], x["sample_index"]) for x in final]
    assert len(keys) == len(set(keys)) == 12 * 3
    assert set(keys) == {(x["problem_id"], x["sample_index"]) for x in read_jsonl(ref)}
    import json

    by_id = {x["id"]: x for x in final}
    for line in before:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # the torn last line, if the kill landed mid-write
        assert by_id[rec["id"]] == rec
    assert not part.exists()


def test_short_help_and_version(capsys):
    from cotshape import __version__

    assert main(["-h"]) == 0
    out = capsys.readouterr().out
    assert "Usage: cotshape" in out and "dvc repro" in out
    for cmd in ("sample", "verify", "models", "tasks", "preset", "compare"):
        assert f"  {cmd} " in out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"cotshape {__version__}"
    assert main(["preset", "-h"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {c} " in out for c in ("list", "show", "apply", "exp"))


def test_help_texts_keep_square_brackets(capsys):
    assert main(["models", "materialize", "-h"]) == 0
    assert "hub id[@rev]" in capsys.readouterr().out  # rich markup would eat "[@rev]"


def test_sample_defaults_are_the_params_defaults():
    """One source: `cotshape sample` without options samples like the sample stage's defaults."""
    import inspect

    from cotshape.cli import sample
    from cotshape.core.config import BaseParams, SampleParams

    defaults = {k: v.default for k, v in inspect.signature(sample).parameters.items()}
    sp, bp = SampleParams(), BaseParams()
    for key in ("k", "max_new_tokens", "temperature", "top_p", "batch_size", "tensor_parallel_size", "shots"):
        assert defaults[key] == getattr(sp, key), key
    assert defaults["backend"].value == bp.backend and defaults["dtype"].value == bp.dtype
    assert defaults["seed"] == bp.seed and defaults["device"] == bp.device


def test_preset_subcommands(tmp_path, capsys):
    import shutil

    target = tmp_path / "params.yaml"
    shutil.copy(REPO_ROOT / "params.yaml", target)
    assert main(["preset", "list"]) == 0
    assert "paper-gemma-2-2b" in capsys.readouterr().out
    assert main(["preset", "show", "gemma-2-2b"]) == 0
    assert "sft.py" in capsys.readouterr().out
    assert main(["preset", "apply", "gemma-2-2b", "--params", str(target), "--dry-run"]) == 0
    assert "dry run" in capsys.readouterr().out and target.read_text() == (REPO_ROOT / "params.yaml").read_text()
    assert main(["preset", "exp", "gemma-2-2b", "--params", str(target), "--set", "prepare.train_size=50"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dvc exp run") and "prepare.train_size=50" in out
    assert main(["preset", "apply", "no-such-preset", "--params", str(target)]) == 2
    assert "error: unknown preset 'no-such-preset'" in capsys.readouterr().err
    assert main(["preset"]) == 0  # no args: the help, as for every group
