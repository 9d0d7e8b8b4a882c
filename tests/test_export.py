"""`cotshape export`: the training sets as a DatasetDict with a dataset card, round trip offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cotshape.cli import main
from cotshape.core.records import write_json, write_jsonl

REPO = Path(__file__).parent.parent


def _rec(set_name: str, pid: str, **extra) -> dict:
    return {"id": f"gsm8k-{set_name}-{pid}", "problem_id": pid, "task": "gsm8k", "set": set_name,
            "prompt": [{"role": "user", "content": f"question {pid}"}], "completion": f"{set_name} {pid}\nThe answer is 1.",
            **extra}


@pytest.fixture
def run_repo(tmp_path):
    """A repository after a run: params.yaml, data/sets/gsm8k, dvc.lock with the set hashes."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    sets = tmp_path / "data" / "sets" / "gsm8k"
    (sets / "mix").mkdir(parents=True)
    pids = ["p1", "p2", "p3"]
    write_jsonl(sets / "H.jsonl", [_rec("H", p) for p in pids])
    write_jsonl(sets / "G.jsonl", [_rec("G", p, source_sample=f"{p}#0", extracted="1") for p in pids[:2]])
    write_jsonl(sets / "W.jsonl", [_rec("W", p, source_sample=f"{p}#1", extracted="2") for p in pids[:2]])
    write_jsonl(sets / "mix" / "mix-0.5.jsonl", [_rec("mix-0.5", p, flawed=i == 0) for i, p in enumerate(pids[:2])])
    (sets / "step").mkdir()
    for k in (1, 10, 2):  # the degrade.step_k sweep: one file per k in the step folder
        write_jsonl(sets / "step" / f"step-{k}.jsonl", [_rec(f"step-{k}", p, degraded_steps=k) for p in pids[:2]])
    write_json(sets / "ids.json", {"n": 2, "policy": "both", "problem_ids": pids[:2]})
    lock = {"schema": "2.0", "stages": {"select@gsm8k": {"cmd": "x", "outs": [
        {"path": "data/sets/gsm8k/G.jsonl", "md5": "0123456789abcdef0123456789abcdef", "size": 1}]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    return tmp_path


@pytest.mark.parametrize("fmt", ["disk", "parquet"])
def test_export_round_trip(run_repo, tmp_path, fmt):
    from datasets import load_dataset, load_from_disk

    out = tmp_path / "export"
    assert main(["export", "--repo", str(run_repo), "--out", str(out), "--format", fmt]) == 0
    target = out / "gsm8k"
    if fmt == "disk":
        dd = load_from_disk(str(target))
    else:
        dd = load_dataset("parquet", data_files={s: str(target / "data" / f"{s}-00000-of-00001.parquet")
                                                 for s in ("H", "G", "W", "step_1", "step_2", "step_10", "mix_0.5")})
    assert sorted(dd) == ["G", "H", "W", "mix_0.5", "step_1", "step_10", "step_2"]
    assert json.loads(dd["step_2"][0]["extra"]) == {"degraded_steps": 2} and dd["step_10"]["set"] == ["step-10"] * 2
    # the rows SFT trained on: H restricted to ids.json like the other sets
    assert dd["H"]["problem_id"] == ["p1", "p2"] and dd["G"].num_rows == 2
    g = dd["G"][0]
    assert g["prompt"] == [{"role": "user", "content": "question p1"}] and g["completion"].startswith("G p1")
    assert g["source_sample"] == "p1#0" and g["extracted"] == "1" and g["flawed"] is None
    assert dd["mix_0.5"]["flawed"] == [True, False]
    assert json.loads(dd["H"][0]["extra"]) == {}
    readme = (target / "README.md").read_text()
    assert "| G | 2 | `data/sets/gsm8k/G.jsonl` | `0123456789abcdef0123456789abcdef` |" in readme
    assert "smollm2-135m-instruct" in readme and "License" in readme and "balance = true" in readme
    # training order: H, G, W, the step sets by k, the mixtures
    table = [ln.split("|")[1].strip() for ln in readme.splitlines() if ln.startswith("| ") and "rows" not in ln]
    assert table == ["H", "G", "W", "step_1", "step_2", "step_10", "mix_0.5"]
    assert "`data/sets/gsm8k/step/step-2.jsonl`" in readme and "**step_K**: G" in readme
    assert ("config_name: gsm8k" in readme) == (fmt == "parquet")
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary folder left


def test_export_without_sets_is_one_error(run_repo, tmp_path, capsys):
    shutil.rmtree(run_repo / "data")
    assert main(["export", "--repo", str(run_repo), "--out", str(tmp_path / "e")]) == 2
    assert "no training sets" in capsys.readouterr().err
