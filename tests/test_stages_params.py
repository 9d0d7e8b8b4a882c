"""Every stage refuses bad params with one line naming the key, exit code 2, and no outs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# (script, arguments with OUT placeholders for every path it would write)
STAGES = {
    "models": ["--teacher-out", "OUT/teacher", "--student-out", "OUT/student"],
    "prepare": ["--task", "countdown", "--train-out", "OUT/train.jsonl", "--test-out", "OUT/test.jsonl",
                "--human-out", "OUT/H.jsonl"],
    "sample": ["--task", "countdown", "--shard", "0", "--problems", "IN/train.jsonl", "--model", "IN/model",
               "--out", "OUT/shard-0.jsonl"],
    "merge_samples": ["--problems", "IN/train.jsonl", "--shards-dir", "IN", "--out", "OUT/samples.jsonl"],
    "verify": ["--task", "countdown", "--problems", "IN/train.jsonl", "--samples", "IN/s.jsonl",
               "--out", "OUT/verified.jsonl", "--metrics", "OUT/verify.json"],
    "select_gw": ["--task", "countdown", "--problems", "IN/train.jsonl", "--verified", "IN/v.jsonl",
               "--sets-dir", "OUT", "--metrics", "OUT/select.json"],
    "paraphrase": ["--task", "countdown", "--problems", "IN/train.jsonl", "--student", "IN/m", "--teacher", "IN/m",
                   "--out", "OUT/P.jsonl", "--metrics", "OUT/p.json"],
    "degrade": ["--task", "countdown", "--problems", "IN/train.jsonl", "--good", "IN/G.jsonl", "--teacher", "IN/m",
                "--mix-dir", "OUT/mix", "--step-dir", "OUT/step", "--metrics", "OUT/d.json"],
    "sft": ["--task", "countdown", "--set", "H", "--data", "IN/H.jsonl", "--student", "IN/m", "--out", "OUT/sft",
            "--metrics", "OUT/sft.json", "--loss-plot", "OUT/loss.csv"],
    "evaluate": ["--task", "countdown", "--set", "H", "--problems", "IN/test.jsonl", "--model", "IN/m",
                 "--out", "OUT/eval.jsonl", "--metrics", "OUT/eval.json"],
    "closeness": ["--task", "countdown", "--student", "IN/m", "--sets-dir", "IN", "--out", "OUT/c.json"],
    "report": ["--metrics-dir", "IN", "--plots-dir", "IN", "--out-dir", "OUT/reports", "--eval-dir", "IN",
               "--sets-dir", "IN", "--claims-out", "OUT/claims.json", "--summary-out", "OUT/summary.json"],
}

BAD = [
    ({"degrade": {"flawed_fractions": [0.25, 1.5]}}, "degrade.flawed_fractions[1]: must be in (0, 1]"),
    ({"sample": {"k": 0}}, "sample.k: must be >= 1"),
    ({"base": {"tasks": ["countdwn"]}}, "base.tasks[0]: unknown task 'countdwn'"),
    ({"sft": {"lerning_rate": 0.1}}, "unknown key 'sft.lerning_rate'"),
    ({"sample": {"temperature": float("nan")}}, "sample.temperature: must be a finite number, got nan"),
    ({"base": {"seed": -1}}, "base.seed: must be >= 0, got -1"),
    ({"sample": {"shards": []}}, "sample.shards: must list at least one shard"),
    ({"select": {"max_verifier_errors": 1.5}}, "select.max_verifier_errors: must be <= 1"),
]


@pytest.mark.parametrize("stage", sorted(STAGES))
@pytest.mark.parametrize(("change", "message"), BAD[:1] + BAD[2:3])
def test_stage_refuses_bad_params(tmp_path, stage, change, message):
    _run_and_check(tmp_path, stage, change, message)


@pytest.mark.parametrize(("change", "message"), BAD)
def test_each_bad_value_is_named(tmp_path, change, message):
    _run_and_check(tmp_path, "select_gw", change, message)


def _run_and_check(tmp_path, stage, change, message):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in change.items():
        params.setdefault(section, {}).update(values)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    out = tmp_path / "out"
    args = [a.replace("OUT", str(out)).replace("IN", str(tmp_path / "in")) for a in STAGES[stage]]
    env = dict(os.environ, COTSHAPE_PARAMS=str(pfile))
    proc = subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln]
    assert lines == [lines[-1]] and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert str(pfile) in lines[0]
    assert not out.exists()  # nothing written
