"""Each stage's MLflow params come from its dvc.yaml ``params:`` (one list, kept in dvc.yaml):
cotshape.pipeline.stage.dvc_params reads it, cotshape.tracking.stage_run.stage_params refuses a key
that is no params.yaml key instead of skipping it."""

from __future__ import annotations

import re

import pytest
import yaml
from conftest import REPO_ROOT

from cotshape.core.config import load_params
from cotshape.core.errors import CotshapeError, ParamsError
from cotshape.pipeline.stage import dvc_params
from cotshape.tracking.stage_run import stage_params

P = load_params(REPO_ROOT / "params.yaml")


def test_dvc_params_is_the_stages_list_in_dvc_yaml():
    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        body = st.get("do", st)
        assert dvc_params(name, REPO_ROOT / "dvc.yaml") == tuple(body.get("params") or []), name
    assert "base.sft_seed" in dvc_params("sft_mix", REPO_ROOT / "dvc.yaml")  # a matrix stage
    assert dvc_params("select", REPO_ROOT / "dvc.yaml") == ("base.seed", "base.data_seed", "select")  # foreach


def test_every_stage_of_the_graph_logs_known_keys():
    for name in yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]:
        flat = stage_params(P, dvc_params(name, REPO_ROOT / "dvc.yaml"))
        for key in dvc_params(name, REPO_ROOT / "dvc.yaml"):
            assert any(k == key or k.startswith(key + ".") for k in flat), (name, key)
    assert stage_params(P, ("sft", "base.seed"))["sft.learning_rate"] == P.sft.learning_rate


def test_an_unknown_key_is_an_error_not_skipped():
    with pytest.raises(ParamsError, match=r"params key 'sft\.lr' is not a params.yaml key"):
        stage_params(P, ("sft.lr",))


def test_missing_stage_and_bad_entries_name_the_file(tmp_path):
    f = tmp_path / "dvc.yaml"
    f.write_text("stages:\n  a:\n    cmd: x\n    params:\n      - other.yaml: [k]\n")
    with pytest.raises(CotshapeError, match=r"dvc.yaml: no stage 'b' \(has: a\)"):
        dvc_params("b", f)
    with pytest.raises(CotshapeError, match=r"stage 'a': params entry .* is not a params.yaml key"):
        dvc_params("a", f)


def test_no_stage_script_keeps_a_second_hand_list():
    for script in (REPO_ROOT / "stages").glob("*.py"):
        text = script.read_text()
        assert not re.search(r"sections=\(", text), f"{script.name}: list its params in dvc.yaml, not here"
