"""Seeds per source of randomness (issue #23): base.data_seed (teacher sampling, the G/W draw,
paraphrases, degraded sets), base.sft_seed (SFT) and base.eval_seed (bootstrap intervals), each
falling back to base.seed. Changing only the SFT seed changes no sample; changing only the data
seed changes the samples and leaves the SFT seed alone."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT

from cotshape.core.config import ParamsError, validate_params
from cotshape.core.records import read_jsonl, write_jsonl
from cotshape.tasks import get_task

DEFAULT = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
DATA_STAGES = ("sample", "select", "paraphrase", "degrade")
SFT_STAGES = ("sft", "sft_mix", "sft_step")


def _params(**base):
    raw = copy.deepcopy(DEFAULT)
    raw["base"].update(base)
    return validate_params(raw)


def test_every_source_falls_back_to_base_seed():
    p = _params(seed=7)
    assert [p.base.seed_of(s) for s in ("data", "sft", "eval")] == [7, 7, 7]


def test_each_source_has_its_own_seed():
    p = _params(seed=7, sft_seed=3)
    assert (p.base.seed_of("data"), p.base.seed_of("sft"), p.base.seed_of("eval")) == (7, 3, 7)
    p = _params(seed=7, data_seed=11)
    assert (p.base.seed_of("data"), p.base.seed_of("sft"), p.base.seed_of("eval")) == (11, 7, 7)
    p = _params(eval_seed=2)
    assert (p.base.seed_of("data"), p.base.seed_of("eval")) == (0, 2)
    with pytest.raises(ValueError, match="unknown source 'test'"):
        p.base.seed_of("test")


@pytest.mark.parametrize("key, value, match", [
    ("sft_seed", -1, r"base\.sft_seed: must be >= 0, got -1"),
    ("data_seed", 2**32, r"base\.data_seed: must be <= 4294967295"),
    ("eval_seed", "x", r"base\.eval_seed: must be an integer, got 'x'"),
])
def test_bad_seeds_are_refused_naming_the_key(key, value, match):
    with pytest.raises(ParamsError, match=match):
        _params(**{key: value})


def test_dvc_reruns_only_the_stages_of_the_changed_seed():
    """dvc.yaml: the data stages depend on base.data_seed and not on base.sft_seed, the SFT stages
    on base.sft_seed and not on base.data_seed; so `dvc exp run -S base.sft_seed=N` resamples nothing."""
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]

    def params_of(name):
        body = stages[name].get("do", stages[name])
        return set(body.get("params", []))

    for s in DATA_STAGES:
        assert "base.data_seed" in params_of(s) and "base.sft_seed" not in params_of(s), s
    for s in SFT_STAGES:
        assert "base.sft_seed" in params_of(s) and "base.data_seed" not in params_of(s), s
    assert "base.eval_seed" in params_of("closeness") and "base" in params_of("report")


def _sample(tmp_path, model, name, **base):
    raw = copy.deepcopy(DEFAULT)
    raw["base"].update(device="cpu", dtype="float32", teacher=model, student=model, **base)
    raw["sample"].update(k=2, max_new_tokens=8, batch_size=4, shots=0, temperature=1.0, top_p=1.0)
    pfile = tmp_path / f"{name}.yaml"
    pfile.write_text(yaml.safe_dump(raw))
    out = tmp_path / f"{name}.jsonl"
    env = dict(os.environ, COTSHAPE_PARAMS=str(pfile), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "stages" / "sample.py"), "--task", "gsm8k", "--shard", "0",
                           "--problems", str(tmp_path / "train.jsonl"), "--model", model, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [r["completion"] for r in read_jsonl(out)]


def test_only_the_data_seed_changes_the_teacher_samples(tiny_model_dir, tmp_path):
    task = get_task("gsm8k")
    write_jsonl(tmp_path / "train.jsonl", task.load("train", source="offline", limit=2, seed=0, level="easy"))
    model = str(tiny_model_dir)
    ref = _sample(tmp_path, model, "ref")
    assert len(ref) == 4
    assert _sample(tmp_path, model, "sft", sft_seed=5, eval_seed=9) == ref  # SFT and eval seeds: no sample changes
    assert _sample(tmp_path, model, "data", data_seed=5) != ref             # the data seed: new samples
