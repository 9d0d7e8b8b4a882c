"""Training runs as the unit of replication (issue #23): the sft stage trains a set sft.runs times
in one process (run R with SFT seed base.sft_seed + R, in OUT/run-R), and the evaluate stage
evaluates every run, on the tiny model through the real stage scripts."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT

from cotshape.core.records import read_json, read_jsonl, training_record, write_jsonl
from cotshape.tasks import get_task

DEFAULT = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def _run(script, args, tmp_path, **sections):
    raw = copy.deepcopy(DEFAULT)
    raw["base"]["prompt_format"] = "chat"  # the stages run here without --problems (plain needs them)
    for section, values in sections.items():
        raw[section].update(values)
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, COTSHAPE_PARAMS=str(pfile), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / script), *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    task = get_task("gsm8k")
    train = task.load("train", source="offline", limit=4, seed=0, level="easy")
    test = task.load("test", source="offline", limit=3, seed=0, level="easy")
    write_jsonl(tmp / "test.jsonl", test)
    write_jsonl(tmp / "G.jsonl", [training_record("gsm8k", "G", p["id"], task.chat_messages(p), p["solution"])
                                  for p in train])
    base = {"device": "cpu", "dtype": "float32", "student": str(tiny_model_dir), "teacher": str(tiny_model_dir),
            "sft_seed": 5}
    # sft.runs_by_set names G: its two runs, not sft.runs' one
    sft = {"runs": 1, "runs_by_set": {"G": 2}, "max_steps": 2, "batch_size": 2, "dtype": "float32", "max_length": 128}
    out = tmp / "sft"
    _run("sft.py", ["--task", "gsm8k", "--set", "G", "--data", tmp / "G.jsonl", "--student", tiny_model_dir,
                    "--out", out, "--metrics", tmp / "sft.json", "--loss-plot", tmp / "loss.csv"], tmp,
         base=base, sft=sft)
    _run("evaluate.py", ["--task", "gsm8k", "--set", "G", "--problems", tmp / "test.jsonl", "--model", out,
                         "--out", tmp / "eval.jsonl", "--metrics", tmp / "eval.json"], tmp,
         base=base, evaluate={"max_new_tokens": 4, "batch_size": 4})
    return tmp


def test_each_run_has_its_own_folder_and_seed(trained):
    runs = sorted(p.name for p in (trained / "sft").iterdir())
    assert runs == ["run-0", "run-1"]
    adapters = [(trained / "sft" / r / "adapter_model.safetensors").read_bytes() for r in runs]
    assert adapters[0] != adapters[1]  # another SFT seed: another LoRA init and data order
    m = read_json(trained / "sft.json")
    assert m["runs"] == 2 and m["seeds"] == [5, 6]
    assert [r["seed"] for r in m["per_run"]] == [5, 6] and [r["run"] for r in m["per_run"]] == [0, 1]
    assert m["steps"] == 2 and m["examples"] == 4
    assert m["final_loss"] == pytest.approx(sum(r["final_loss"] for r in m["per_run"]) / 2)
    for r in runs:
        log = json.loads((trained / "sft" / r / "train_log.json").read_text())
        assert log["params"]["seed"] == (5 if r == "run-0" else 6)
    rows = (trained / "loss.csv").read_text().splitlines()
    assert rows[0] == "run,step,loss" and {row.split(",")[0] for row in rows[1:]} == {"0", "1"}


def test_every_run_is_evaluated(trained):
    records = read_jsonl(trained / "eval.jsonl")
    assert [r["run"] for r in records] == [0, 0, 0, 1, 1, 1]
    assert {r["problem_id"] for r in records if r["run"] == 0} == {r["problem_id"] for r in records if r["run"] == 1}
    m = read_json(trained / "eval.json")
    assert m["runs"] == 2 and len(m["per_run"]) == 2 and m["n"] == 3
    assert m["accuracy"] == pytest.approx(sum(r["accuracy"] for r in m["per_run"]) / 2)
    assert m["ci95_is"].startswith("training runs (2")
    # provenance names the dtype the backend loaded (float32 here, as base.dtype asks)
    assert [r["dtype"] for r in m["per_run"]] == ["float32", "float32"] and m["provenance"]["dtype"] == "float32"
