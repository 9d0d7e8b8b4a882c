"""Provenance of every number (cotshape/core/provenance.py): the block the evaluate stage writes and
the merged metrics/provenance.json of the report stage."""

from __future__ import annotations

import json
import re
import subprocess

from conftest import REPO_ROOT

from cotshape.core.provenance import MIXED, cotshape_commit, merge, package_versions, provenance


def test_block_has_every_field_with_real_values():
    block = provenance(backend="transformers", dtype="float32", device="cpu", batch_size={"evaluate": 128},
                       tensor_parallel_size=2)
    assert set(block) == {"cotshape_commit", "versions", "backend", "dtype", "device", "cpu", "gpu", "batch_size",
                          "tensor_parallel_size"}
    assert set(block["versions"]) == {"torch", "transformers", "trl", "peft", "vllm", "math_verify", "reasoning_gym"}
    import torch
    import transformers

    assert block["versions"]["torch"] == torch.__version__.split("+")[0] or block["versions"]["torch"] == torch.__version__
    assert block["versions"]["transformers"] == transformers.__version__
    assert block["gpu"] is None and block["device"] == "cpu"
    assert block["tensor_parallel_size"] is None  # only vllm has one
    assert provenance(backend="vllm", dtype="bfloat16", device="cpu", batch_size={},
                      tensor_parallel_size=2)["tensor_parallel_size"] == 2


def test_versions_none_for_a_package_not_installed():
    assert package_versions(("surely-not-a-package-xyz",)) == {"surely_not_a_package_xyz": None}


def test_commit_is_the_checkouts_head(tmp_path):
    head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    commit = cotshape_commit()
    if head.returncode != 0:
        assert commit is None
    else:
        assert commit.split("+")[0] == head.stdout.strip() and re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", commit)
    assert cotshape_commit(tmp_path) is None  # not a git checkout


def test_merge_keeps_agreement_and_lists_disagreement():
    a = {"backend": "transformers", "versions": {"torch": "2.13.0", "trl": "1.16"}, "batch_size": {"evaluate": 128}}
    b = {"backend": "transformers", "versions": {"torch": "2.13.0", "trl": "1.15"}, "batch_size": {"evaluate": 64}}
    out = merge({"eval/x.json": a, "eval/y.json": b})
    assert out["backend"] == "transformers" and out["versions"]["torch"] == "2.13.0"
    assert out["versions"]["trl"] is None and out["batch_size"]["evaluate"] is None
    assert out[MIXED] == {"versions.trl": {"eval/x.json": "1.16", "eval/y.json": "1.15"},
                          "batch_size.evaluate": {"eval/x.json": 128, "eval/y.json": 64}}
    assert merge({"one": a}) == a and merge({}) == {}


def test_report_merges_only_the_evaluation_files_of_this_runs_params(tmp_path):
    """A metrics folder may keep evaluation files of sets an earlier params trained (a git
    checkout keeps them): they are no provenance of this run's numbers and must not be merged."""
    import importlib.util

    from cotshape.core.config import load_params

    root = REPO_ROOT
    spec = importlib.util.spec_from_file_location("_stage_report", root / "stages" / "report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    p = load_params(root / "params.yaml")  # the default: no step set, mixtures 0.25 and 1.0
    assert p.degrade.step_k == [] and p.degrade.flawed_fractions == [0.25, 1.0]
    (tmp_path / "eval").mkdir()
    for name, commit in (("gsm8k-H", "new"), ("gsm8k-mix-1.0", "new"), ("gsm8k-step-1", "old"), ("gsm8k-mix-0.5", "old")):
        (tmp_path / "eval" / f"{name}.json").write_text(json.dumps({"provenance": {"cotshape_commit": commit}}))
    out = report.run_provenance(p, tmp_path)
    assert out["evaluation_files"] == 2 and out["cotshape_commit"] == "new" and MIXED not in out
