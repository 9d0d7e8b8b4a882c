"""``cotshape compare``: reading ``dvc exp show --json``, grouping seeds, mean ± sd, pooled
verdicts, the Markdown report; and one run on a real git + DVC repo with two seed experiments."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cotshape.cli import main
from cotshape.core import random_effects, stats
from cotshape.reporting import compare as cmp
from cotshape.reporting import compare_markdown, pooling
from cotshape.reporting.compare import CompareError, Experiment

Z95 = 1.959963984540054


# ---- literal data ----------------------------------------------------------------------------

def _claim(cid, kind, diff, half, n=200, verdict="inconclusive", task="gsm8k", **extra):
    ev = {"diff": diff, "ci95": [diff - half, diff + half], "n": n, **extra}
    return {"id": cid, "task": task, "statement": f"statement of {cid}", "kind": kind, "verdict": verdict,
            "evidence": ev}


def _exp(name, seed, h_acc, *, epochs=1, claims=None, rev=None, **sets):
    summary = {"gsm8k": {"teacher_acc": 0.3, "n_test": 200, "compared": 71,
                         "base": {"acc": 0.1, "lo": 0.06, "hi": 0.15},
                         "H": {"acc": h_acc, "lo": h_acc - 0.07, "hi": h_acc + 0.07, "d_base": h_acc - 0.1},
                         **sets}}
    return Experiment(name=name, rev=rev or (name * 40)[:40], kind="experiment",
                      params={"base.seed": seed, "base.tasks": ["gsm8k"], "sft.epochs": epochs},
                      summary=summary, claims=claims)


def _row(name, rev, seed, summary, claims_data=None, executor=None, error=None):
    metrics = {"metrics/summary.json": {"data": summary} if summary is not None else
               {"error": {"type": "FileNotFoundError", "msg": "[Errno 2] No such file"}}}
    if claims_data is not None:
        metrics["metrics/claims.json"] = {"data": claims_data}
    return {"rev": rev, "name": name, "error": error, "experiments": None,
            "data": {"rev": rev, "timestamp": "2026-11-30T11:30:30",
                     "params": {"params.yaml": {"data": {"base": {"seed": seed, "tasks": ["gsm8k"]}}}},
                     "metrics": metrics, "deps": {}, "outs": {}, "meta": {}}}


def _exp_show(summary_of):
    """A ``dvc exp show --json`` document in DVC 3.67's layout (as printed by a scratch repo)."""
    base = _row("master", "c" * 40, 0, summary_of(0))
    exps = [
        {"name": "exp-one", "executor": None, "revs": [_row("exp-one", "1" * 40, 1, summary_of(1))]},
        {"name": "exp-two", "executor": {"state": "success", "name": "dvc-task", "local": {}},
         "revs": [_row("exp-two", "2" * 40, 2, summary_of(2))]},
        {"name": "queued-one", "executor": {"state": "queued", "name": "dvc-task", "local": {}},
         "revs": [_row("queued-one", "3" * 40, 3, None)]},
        {"name": "failed-one", "executor": {"state": "failed", "name": None, "local": {}},
         "revs": [_row("failed-one", "4" * 40, 4, None, error={"msg": "Experiment run failed", "type": ""})]},
    ]
    base["experiments"] = exps
    workspace = _row(None, "workspace", 2, summary_of(2))
    return [workspace, base]


def _summary(seed):
    return {"gsm8k": {"n_test": 200, "H": {"acc": 0.4 + 0.02 * seed, "lo": 0.3, "hi": 0.5}}}


# ---- collect ---------------------------------------------------------------------------------

def test_collect_rows_are_the_baseline_and_finished_experiments(tmp_path):
    skipped: list[str] = []
    exps = cmp.collect(tmp_path, _exp_show(_summary), skipped=skipped)
    assert [(e.name, e.kind, e.seed) for e in exps] == [
        ("master", "baseline", 0), ("exp-one", "experiment", 1), ("exp-two", "experiment", 2)]
    assert exps[1].baseline == "c" * 40 and exps[1].params["base.tasks"] == ["gsm8k"]
    assert skipped == ["queued-one (3333333): queued", "failed-one (4444444): failed"]


def test_collect_workspace_only_when_asked(tmp_path):
    exps = cmp.collect(tmp_path, _exp_show(_summary), workspace=True)
    assert exps[0].kind == "workspace" and exps[0].name == "workspace" and len(exps) == 4


def test_collect_skips_a_row_without_summary(tmp_path):
    doc = _exp_show(lambda s: None if s == 0 else _summary(s))
    skipped: list[str] = []
    exps = cmp.collect(tmp_path, doc, skipped=skipped)
    assert [e.seed for e in exps] == [1, 2]
    assert "master (ccccccc): no metrics/summary.json" in skipped


def test_collect_reads_claims_from_the_json_when_git_cannot(tmp_path):
    claims = {"margin": 0.1, "claims": [_claim("C2", "greater", 0.05, 0.04)]}
    doc = [_row("master", "c" * 40, 0, _summary(0), claims_data=claims)]
    (exp,) = cmp.collect(tmp_path, doc)  # tmp_path is no git repo: git show fails
    assert exp.claims["claims"][0]["id"] == "C2"


def test_no_experiments_is_an_error(tmp_path):
    doc = _exp_show(lambda s: None)
    match = r"no experiments with metrics/summary.json found .*5 skipped: master \(ccccccc\): no metrics/summary"
    with pytest.raises(CompareError, match=match):
        cmp.collect(tmp_path, doc)


@pytest.mark.parametrize("bad, match", [
    (["not", "an", "object"], r"master \(ccccccc\): metrics/summary.json: expected an object"),
    ({"gsm8k": {"H": {"acc": "41%"}}}, r"gsm8k\.H\.acc: expected a number, got '41%'"),
    ({"gsm8k": 3}, r"gsm8k: expected an object of sets"),
    ({"gsm8k": {"teacher_acc": "high"}}, r"gsm8k\.teacher_acc: expected a number or a set object"),
])
def test_malformed_summary_is_an_error_naming_the_key(tmp_path, bad, match):
    with pytest.raises(CompareError, match=match):
        cmp.collect(tmp_path, [_row("master", "c" * 40, 0, bad)])


def test_unreadable_metrics_file_is_an_error(tmp_path):
    row = _row("master", "c" * 40, 0, None)
    row["data"]["metrics"]["metrics/summary.json"] = {"error": {"type": "JSONFileCorruptedError", "msg": "bad"}}
    with pytest.raises(CompareError, match="metrics/summary.json is unreadable"):
        cmp.collect(tmp_path, [row])


def test_dvc_missing_is_one_error_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cmp.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(cmp.shutil, "which", lambda name: None)
    assert main(["compare", "--repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: dvc not found") and "--json" in err and "\n" not in err


def test_saved_json_that_is_not_exp_show_is_an_error(tmp_path, capsys):
    f = tmp_path / "show.json"
    f.write_text('{"rev": "workspace"}')
    assert main(["compare", "--repo", str(tmp_path), "--json", str(f)]) == 2
    assert "expected the list of revisions" in capsys.readouterr().err


# ---- group -----------------------------------------------------------------------------------

def test_group_params_equal_except_the_seed():
    exps = [_exp("a", 2, 0.4), _exp("b", 0, 0.4), _exp("c", 1, 0.4, epochs=2), _exp("d", 1, 0.4)]
    groups = cmp.group(exps)
    assert [g.label for g in groups] == ["sft.epochs=1", "sft.epochs=2"]
    assert [[m.name for m in g.members] for g in groups] == [["b", "d", "a"], ["c"]]  # members by seed


def test_group_one_configuration_is_one_group():
    groups = cmp.group([_exp("a", 0, 0.4), _exp("b", 1, 0.4)])
    assert len(groups) == 1 and groups[0].label == "all experiments" and groups[0].differing == {}


def test_group_by_named_params_only():
    exps = [_exp("a", 0, 0.4), _exp("b", 1, 0.4, epochs=2), _exp("c", 0, 0.4, epochs=3)]
    assert [[m.name for m in g.members] for g in cmp.group(exps, by=["base.seed"])] == [["a", "c"], ["b"]]
    assert len(cmp.group(exps, by_exclude=("base.seed", "sft.epochs"))) == 1


# ---- compare ---------------------------------------------------------------------------------

def test_mean_sd_min_max_per_set():
    exps = [_exp("a", 0, 0.40), _exp("b", 1, 0.42), _exp("c", 2, 0.47)]
    res = pooling.compare(cmp.group(exps))
    h = res["groups"][0]["tasks"]["gsm8k"]["sets"]["H"]
    # by hand: mean 0.43; deviations -0.03, -0.01, 0.04 -> sum of squares 0.0026 / (3 - 1)
    assert h["acc"]["mean"] == pytest.approx(0.43)
    assert h["acc"]["sd"] == pytest.approx(math.sqrt(0.0013))
    assert (h["acc"]["min"], h["acc"]["max"], h["acc"]["k"]) == (0.40, 0.47, 3)
    assert h["acc"]["values"] == pytest.approx([0.40, 0.42, 0.47])
    assert h["d_base"]["mean"] == pytest.approx(0.33)
    assert "lo" not in h  # a per-seed bound is not averaged
    base = res["groups"][0]["tasks"]["gsm8k"]["sets"]["base"]["acc"]
    assert base["sd"] == 0.0 and base["mean"] == pytest.approx(0.1)
    assert res["groups"][0]["tasks"]["gsm8k"]["fields"]["teacher_acc"]["mean"] == pytest.approx(0.3)


def test_one_seed_has_no_sd_and_missing_sets_count_in_k():
    exps = [_exp("a", 0, 0.4, G={"acc": 0.5}), _exp("b", 1, 0.4, G={"acc": None})]
    g = pooling.compare(cmp.group(exps))["groups"][0]["tasks"]["gsm8k"]["sets"]["G"]["acc"]
    assert (g["mean"], g["sd"], g["k"], g["values"]) == (0.5, None, 1, [0.5, None])


T2, T4 = 4.302652730, 2.776445105  # t 97.5 % quantiles, 2 and 4 degrees of freedom
Z95 = 1.959963984540054


def _claims_over(kind, cid, diffs, half, **kw):
    return [_exp(f"e{i}", i, 0.4, claims={"claims": [_claim(cid, kind, d, half)], **kw}) for i, d in enumerate(diffs)]


def _draws_of_one_problem_set(diffs, half, se_test):
    """Experiments that differ only in base.data_seed: the same base.seed, so the same test problems."""
    out = []
    for i, d in enumerate(diffs):
        e = _exp(f"d{i}", 0, 0.4, claims={"claims": [_claim("C2", "greater", d, half, se_test=se_test)]})
        e.params["base.data_seed"] = i
        out.append(e)
    return out


def test_draws_sharing_test_problems_keep_that_noise_whole():
    """Five data draws scored on the same 200 problems, each G - H +0.05 with a test-problem se of
    0.03: the problems' noise is common to the draws, so pooling must not shrink it by 1/5 (HKSJ,
    which takes each draw's se as independent, would say holds)."""
    diffs = [0.05, 0.06, 0.04, 0.05, 0.05]
    members = _draws_of_one_problem_set(diffs, 0.0588, 0.03)
    assert pooling.shares_test_problems(members)
    (c,) = pooling.compare(cmp.group(members))["groups"][0]["claims"]
    p = c["pooled"]
    # by hand: var = 0.03^2 + var(diffs) / 5 = 0.0009 + 0.00005 / 5; Satterthwaite df ~ 202
    var = 0.0009 + 0.00005 / 5
    df = var ** 2 / (0.0009 ** 2 / 199 + (0.00005 / 5) ** 2 / 4)
    half = stats.t975(math.floor(df)) * math.sqrt(var)
    assert p["method"] == pooling.SHARED_METHOD and p["df"] == pytest.approx(df)
    assert p["ci95"] == pytest.approx([0.05 - half, 0.05 + half]) and half > 0.058
    assert p["se_test"] == pytest.approx(0.03) and p["verdict"] == "inconclusive"
    # the same numbers from five whole-pipeline seeds (their own test problems): independent draws
    independent = _claims_over("greater", "C2", diffs, 0.0588)
    assert not pooling.shares_test_problems(independent)
    q = pooling.compare(cmp.group(independent))["groups"][0]["claims"][0]["pooled"]
    assert q["method"] == pooling.HKSJ_METHOD and q["verdict"] == "holds" and q["ci95"][1] - q["ci95"][0] < 2 * half
    assert "shared problems: se 3.0 test" in compare_markdown.render_markdown(pooling.compare(cmp.group(members)))


def test_one_draw_of_shared_problems_gives_no_interval():
    (c,) = pooling.compare(cmp.group(_draws_of_one_problem_set([0.05], 0.0588, 0.03)))["groups"][0]["claims"]
    assert c["pooled"]["ci95"] is None and c["pooled"]["verdict"] == "inconclusive"


def test_pooled_verdict_holds_where_every_seed_was_inconclusive():
    diffs = [0.05, 0.06, 0.04, 0.05, 0.05]  # five runs, each ± 0.065: inconclusive one by one
    (c,) = pooling.compare(cmp.group(_claims_over("greater", "C2", diffs, 0.065)))["groups"][0]["claims"]
    assert c["per_seed"] == ["inconclusive"] * 5 and c["counts"] == {"inconclusive": 5}
    # by hand: tau 0 (the runs agree within their noise), truncated HKSJ: 0.05 ± t(4) se / sqrt 5
    p = c["pooled"]
    half = T4 * 0.065 / Z95 / math.sqrt(5)
    assert p["diff"] == pytest.approx(0.05) and (p["k"], p["n"]) == (5, 1000) and p["tau"] == 0.0
    assert p["ci95"] == pytest.approx([0.05 - half, 0.05 + half])
    assert p["verdict"] == "holds" and p["per_seed"] == pytest.approx(diffs)


def test_two_seeds_that_fixed_effect_calls_holds_are_inconclusive_as_runs():
    (c,) = pooling.compare(cmp.group(_claims_over("greater", "C2", [0.06, 0.04], 0.065)))["groups"][0]["claims"]
    p = c["pooled"]
    # fixed effect: 0.05 ± 0.065 / sqrt 2 = [0.004, 0.096] -> holds; runs: t(1) = 12.7 -> inconclusive
    assert p["fixed"]["ci95"] == pytest.approx([0.05 - 0.065 / math.sqrt(2), 0.05 + 0.065 / math.sqrt(2)])
    assert p["fixed"]["verdict"] == "holds" and p["verdict"] == "inconclusive"
    assert p["ci95"][1] - p["ci95"][0] > p["fixed"]["ci95"][1] - p["fixed"]["ci95"][0]


def test_seeds_that_disagree_widen_the_pooled_interval():
    # the committed G - H per seed, each ± 6 points: every fixed-effect reading says holds
    (c,) = pooling.compare(cmp.group(_claims_over("greater", "C2", [0.17, 0.125, 0.015], 0.06)))["groups"][0]["claims"]
    p = c["pooled"]
    assert p["fixed"]["verdict"] == "holds" and p["verdict"] == "inconclusive"
    assert p["ci95"][0] < 0 < p["ci95"][1] and p["tau"] > 0.05 and p["i2"] > 0.8


def test_pooled_verdict_less_and_contradicted():
    exps = _claims_over("less", "C6", [0.1, 0.09, 0.11, 0.1], 0.05)
    (c,) = pooling.compare(cmp.group(exps))["groups"][0]["claims"]
    assert c["pooled"]["diff"] == pytest.approx(0.1) and c["pooled"]["verdict"] == "contradicted"


def test_pooled_equivalent_uses_the_claims_margin():
    # -0.02 ± t(3) 0.0306 / 2 = [-0.069, 0.029]: inside ±0.1, not inside ±0.03
    (c,) = pooling.compare(cmp.group(_claims_over("equivalent", "C5", [-0.02] * 4, 0.06, margin=0.1)))["groups"][0]["claims"]
    assert c["margin"] == 0.1 and c["pooled"]["verdict"] == "holds"
    (c,) = pooling.compare(cmp.group(_claims_over("equivalent", "C5", [-0.02] * 4, 0.06, margin=0.03)))["groups"][0]["claims"]
    assert c["pooled"]["verdict"] == "inconclusive"


def _parts_claim(g_diff, w_diff):
    c = _claim("C1", "greater", 0, 0)
    c["evidence"] = {"parts": {"G": {"diff": g_diff, "ci95": [g_diff - 0.1, g_diff + 0.1], "n": 120},
                               "W": {"diff": w_diff, "ci95": [w_diff - 0.05, w_diff + 0.05], "n": 120}}}
    return {"claims": [c]}


@pytest.mark.parametrize("w_diffs, verdict", [((0.1, 0.12, 0.1, 0.12), "holds"),
                                              ((0.0, 0.02, 0.0, 0.02), "inconclusive"),
                                              ((-0.1, -0.12, -0.1, -0.12), "contradicted")])
def test_pooled_parts_claim(w_diffs, verdict):
    exps = [_exp(f"e{i}", i, 0.4, claims=_parts_claim(0.3 + 0.02 * (i % 2), w)) for i, w in enumerate(w_diffs)]
    (c,) = pooling.compare(cmp.group(exps))["groups"][0]["claims"]
    assert c["parts"]["G"]["diff"] == pytest.approx(0.31) and c["parts"]["G"]["verdict"] == "holds"
    assert c["parts"]["W"]["diff"] == pytest.approx(sum(w_diffs) / 4)
    assert c["pooled"]["verdict"] == verdict


def test_claim_missing_in_a_seed_pools_the_others():
    exps = [_exp("a", 0, 0.4, claims={"claims": [_claim("C2", "greater", 0.05, 0.04, verdict="holds")]}),
            _exp("b", 1, 0.4, claims={"claims": []})]
    (c,) = pooling.compare(cmp.group(exps))["groups"][0]["claims"]
    assert c["per_seed"] == ["holds", None] and c["counts"] == {"holds": 1, "missing": 1}
    # one run: no run-level interval, so no run-level verdict (the seed's own verdict stays in per_seed)
    assert c["pooled"]["k"] == 1 and c["pooled"]["verdict"] == "inconclusive"
    assert c["pooled"]["ci95"] is None and "one training run" in c["pooled"]["reason"]


def _with_provenance(e, prov):
    e.provenance = prov
    return e


def test_provenance_that_agrees_gives_no_warning_and_none_recorded_gives_none():
    prov = {"versions": {"torch": "2.13.0"}, "cpu": "AMD EPYC 9B14", "batch_size": {"evaluate": 128}}
    same = [_with_provenance(_exp(f"s{i}", i, 0.4), dict(prov)) for i in range(3)]
    assert pooling.provenance_warnings(same) == []
    assert pooling.provenance_warnings([_exp("a", 0, 0.4), _exp("b", 1, 0.4)]) == []


def test_provenance_that_differs_is_warned_naming_each_field_and_value():
    a = _with_provenance(_exp("a", 0, 0.4), {"versions": {"torch": "2.13.0", "math_verify": "0.8.0"},
                                            "cpu": "AMD EPYC", "batch_size": {"evaluate": 128}})
    b = _with_provenance(_exp("b", 1, 0.4), {"versions": {"torch": "2.13.0", "math_verify": "0.9.0"},
                                            "cpu": "Intel Xeon (AMX)", "batch_size": {"evaluate": 256}})
    c = _exp("c", 2, 0.4)  # an older commit: no provenance
    w_missing, w_differ = pooling.provenance_warnings([a, b, c])
    assert w_missing.startswith("no metrics/provenance.json in c (older commits)")
    assert ("batch_size.evaluate (a: 128, b: 256); cpu (a: AMD EPYC, b: Intel Xeon (AMX)); "
            "versions.math_verify (a: 0.8.0, b: 0.9.0).") in w_differ
    assert "versions.torch" not in w_differ
    # a field only one of them records is a difference too
    b.provenance["gpu"] = "H200"
    assert "gpu (a: absent, b: H200)" in pooling.provenance_warnings([a, b])[0]
    # and the warning reaches the group's warnings
    (g,) = pooling.compare(cmp.group([a, b]))["groups"]
    assert any("versions.math_verify" in w for w in g["warnings"])


def test_stage_code_fingerprints_are_read_from_the_rows_deps():
    row = _row("master", "c" * 40, 0, {"gsm8k": {"n_test": 200}})
    row["data"]["deps"] = {"code/sft.txt": {"hash": "a" * 32, "size": 10, "nfiles": None},
                           "data/prepared/gsm8k/train.jsonl": {"hash": "b" * 32}, "code/evaluate.txt": {"hash": None}}
    assert cmp.code_fingerprints(row["data"]) == {"code/sft.txt": "a" * 32}
    assert cmp.code_fingerprints({"deps": {}}) is None
    (e,) = cmp.collect(Path("."), [row])
    assert e.code == {"code/sft.txt": "a" * 32}


def _with_code(e, **fingerprints):
    e.code = {f"code/{k}.txt": v for k, v in fingerprints.items()}
    return e


def test_different_stage_code_is_warned_naming_each_stage_and_hash():
    a = _with_code(_exp("a", 0, 0.4), sft="1111111aaa", evaluate="2222222bbb")
    b = _with_code(_exp("b", 1, 0.4), sft="3333333ccc", evaluate="2222222bbb")
    (w,) = pooling.code_warnings([a, b])
    assert w.startswith("pooled experiments ran different stage code: code/sft.txt (a: 1111111, b: 3333333)")
    assert "evaluate" not in w
    c = _with_code(_exp("c", 2, 0.4), evaluate="2222222bbb")  # a stage only some of them have
    assert "code/sft.txt (a: 1111111, b: 3333333, c: absent)" in pooling.code_warnings([a, b, c])[0]
    assert pooling.code_warnings([a, _with_code(_exp("d", 3, 0.4), sft="1111111aaa", evaluate="2222222bbb")]) == []
    assert pooling.code_warnings([a, _exp("e", 4, 0.4)]) == []  # a row without fingerprints: nothing to compare
    (g,) = pooling.compare(cmp.group([a, b]))["groups"]
    assert any("ran different stage code" in w for w in g["warnings"])


def test_commits_that_differ_with_the_same_stage_code_say_so():
    prov = {"cotshape_commit": "1" * 40, "cpu": "Intel Xeon (AMX)"}
    a = _with_code(_with_provenance(_exp("a", 0, 0.4), dict(prov)), sft="s", evaluate="e")
    b = _with_code(_with_provenance(_exp("b", 1, 0.4), {**prov, "cotshape_commit": "2" * 40}), sft="s", evaluate="e")
    (w,) = pooling.provenance_warnings([a, b])
    assert "cotshape_commit (a: 1111" in w and "The commits differ, but all 2 stage-code fingerprints (code/*.txt) are equal" in w
    b.code["code/sft.txt"] = "other"
    (w,) = pooling.provenance_warnings([a, b])
    assert "are equal" not in w  # code_warnings names the stage instead
    b.provenance["cotshape_commit"] = "1" * 40
    b.provenance["cpu"] = "AMD EPYC"
    (w,) = pooling.provenance_warnings([a, _with_code(b, sft="s", evaluate="e")])
    assert "cpu (a: Intel Xeon (AMX), b: AMD EPYC)" in w and "code fingerprint" not in w  # no commit differs


def test_duplicate_seed_is_warned():
    res = pooling.compare(cmp.group([_exp("a", 0, 0.4), _exp("b", 0, 0.4)]))
    assert "seed 0 appears in 2 experiments (a, b)" in res["groups"][0]["warnings"][0]


# ---- render / write --------------------------------------------------------------------------

def test_markdown_holds_the_numbers():
    exps = [_exp("a", 0, 0.40, claims={"claims": [_claim("C2", "greater", 0.06, 0.065)]}),
            _exp("b", 1, 0.42, claims={"claims": [_claim("C2", "greater", 0.04, 0.065)]})]
    md = compare_markdown.render_markdown(pooling.compare(cmp.group(exps), skipped=["q (1234567): queued"]))
    assert "| H | 41.0 ± 1.4 | 40.0 – 42.0 | 2 | 40.0 | 42.0 | 31.0 ± 1.4 |" in md
    assert "| set | accuracy mean ± sd | min – max | k | seed 0 | seed 1 | Δ vs base (pp) |" in md
    assert "inconclusive, inconclusive" in md and "0 / 0 / 2" in md
    assert "(k 2, τ 0.000, I² 0 %) | **inconclusive** | +0.050 [+0.004, +0.096] holds |" in md
    assert "Hartung-Knapp-Sidik-Jonkman" in md and "fixed effect (secondary)" in md and "Skipped (not compared): q (1234567): queued." in md
    # a count stays a count, a fraction is shown in %
    assert "Also: compared 71.0 ± 0.0; n_test 200; teacher_acc 30.0 ± 0.0 %" in md


def test_write_is_atomic_and_complete(tmp_path):
    res = pooling.compare(cmp.group([_exp("a", 0, 0.4), _exp("b", 1, 0.42)]))
    md, js = compare_markdown.write(res, tmp_path / "out")
    assert json.loads(js.read_text())["groups"][0]["tasks"]["gsm8k"]["sets"]["H"]["acc"]["k"] == 2
    assert md.read_text().startswith("# Experiments compared")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["compare.json", "compare.md"]


# ---- summary layouts and the cross-student tables ----------------------------------------------

def _new_layout(seed, student, h, g, w, p, base=0.1, **params):
    """An experiment whose metrics/summary.json has the report's newer layout: per set
    {acc, ci, loss, step_acc}, no lo/hi/d_base/d_H."""
    def entry(acc):
        return {"acc": acc, "ci": f"[{acc - 0.05:.3f}, {acc + 0.05:.3f}]", "loss": 0.5, "step_acc": 0.9}

    summary = {"gsm8k": {"n_test": 200, "base": {"acc": base, "ci": "[0.06, 0.15]"},
                         "H": entry(h), "G": entry(g), "W": entry(w), "P": entry(p)}}
    return Experiment(name=f"{student}-{seed}", rev=f"{student}{seed}".ljust(40, "0")[:40], kind="experiment",
                      params={"base.seed": seed, "base.student": student, **params}, summary=summary)


def test_new_summary_layout_derives_d_base_and_old_layout_keeps_its_own():
    old = _exp("old", 0, 0.40, G={"acc": 0.5, "lo": 0.4, "hi": 0.6, "d_base": 0.33})  # d_base given: kept
    new = _exp("new", 1, 0.44)
    new.summary["gsm8k"] = {"n_test": 200, "base": {"acc": 0.1, "ci": "[0.06, 0.15]"},
                            "H": {"acc": 0.44, "ci": "[0.37, 0.51]", "loss": 0.7, "step_acc": 1.0},
                            "G": {"acc": 0.52, "ci": "[0.45, 0.59]", "loss": 0.6, "step_acc": 0.9}}
    cmp.validate_summary(new.summary, "new")
    (g,) = cmp.group([old, new])
    sets = pooling.compare([g])["groups"][0]["tasks"]["gsm8k"]["sets"]
    assert sets["H"]["d_base"]["values"] == pytest.approx([0.30, 0.34])
    assert sets["G"]["d_base"]["values"] == pytest.approx([0.33, 0.42])
    assert "d_base" not in sets["base"] and sets["H"]["acc"]["mean"] == pytest.approx(0.42)
    assert sets["H"]["loss"]["values"] == [None, 0.7]


def test_d_base_is_not_invented_without_a_base_accuracy():
    e = _exp("x", 0, 0.4)
    del e.summary["gsm8k"]["base"]
    del e.summary["gsm8k"]["H"]["d_base"]
    sets = pooling.compare(cmp.group([e]))["groups"][0]["tasks"]["gsm8k"]["sets"]
    assert "d_base" not in sets["H"]


@pytest.mark.parametrize("name, size, n", [
    ("google/gemma-2-9b", "9B", 9e9), ("google/gemma-2-2b", "2B", 2e9), ("Qwen/Qwen2.5-1.5B", "1.5B", 1.5e9),
    ("meta-llama/Llama-3.1-8B", "8B", 8e9), ("smollm2-135m-instruct", "135M", 1.35e8),
    ("HuggingFaceTB/SmolLM2-360M-Instruct@main", "360M", 3.6e8), ("models/student", None, None), (None, None, None)])
def test_model_size_from_the_name(name, size, n):
    assert pooling.model_size(name) == (size, n)


def test_across_students_rows_by_size_with_mean_sd_and_p_gain():
    exps = [
        _new_layout(0, "google/gemma-2-9b", 0.60, 0.66, 0.62, 0.64),
        _new_layout(1, "google/gemma-2-9b", 0.62, 0.70, 0.64, 0.70),
        _new_layout(0, "Qwen/Qwen2.5-1.5B", 0.30, 0.40, 0.36, 0.38),
        _new_layout(1, "Qwen/Qwen2.5-1.5B", 0.34, 0.42, 0.38, 0.36),
        _new_layout(2, "Qwen/Qwen2.5-1.5B", 0.32, 0.44, 0.40, 0.34),
    ]
    result = pooling.compare(cmp.group(exps))
    rows = result["students"]["rows"]
    assert [(r["student"], r["size"], r["seeds"]) for r in rows] == [
        ("Qwen/Qwen2.5-1.5B", "1.5B", [0, 1, 2]), ("google/gemma-2-9b", "9B", [0, 1])]
    qwen, gemma = rows[0]["tasks"]["gsm8k"], rows[1]["tasks"]["gsm8k"]
    assert qwen["H"]["mean"] == pytest.approx(0.32) and qwen["H"]["sd"] == pytest.approx(0.02)
    assert qwen["G"]["mean"] == pytest.approx(0.42) and qwen["W"]["mean"] == pytest.approx(0.38)
    # P - H per seed: qwen 0.08, 0.02, 0.02; gemma 0.04, 0.08
    assert qwen["P_minus_H"]["values"] == pytest.approx([0.08, 0.02, 0.02])
    assert qwen["P_minus_H"]["mean"] == pytest.approx(0.04)
    assert gemma["P_minus_H"]["mean"] == pytest.approx(0.06) and gemma["P"]["sd"] == pytest.approx(0.0424264, abs=1e-6)
    assert rows[0]["config"] == {} and json.loads(json.dumps(result)) == result

    md = compare_markdown.render_markdown(result)
    assert "## Across students" in md and "### gsm8k: accuracy (%) by student" in md
    assert "| student | size | k | H | G | W | P | P − H (pp) |" in md
    assert "| Qwen/Qwen2.5-1.5B | 1.5B | 3 | 32.0 ± 2.0 | 42.0 ± 2.0 | 38.0 ± 2.0 | 36.0 ± 2.0 | 4.0 ± 3.5 |" in md
    assert md.index("| Qwen/Qwen2.5-1.5B |") < md.index("| google/gemma-2-9b |")


def test_across_students_a_student_with_two_configurations_has_two_labelled_rows():
    exps = [_new_layout(0, "google/gemma-2-2b", 0.3, 0.4, 0.35, 0.33, **{"sft.precision": "bf16"}),
            _new_layout(0, "google/gemma-2-2b", 0.4, 0.5, 0.45, 0.43, **{"sft.precision": "amp"}),
            _new_layout(0, "google/gemma-2-9b", 0.5, 0.6, 0.55, 0.53, **{"sft.precision": "bf16"})]
    rows = pooling.compare(cmp.group(exps))["students"]["rows"]
    assert [(r["student"], r["config"]) for r in rows] == [
        ("google/gemma-2-2b", {"sft.precision": "bf16"}), ("google/gemma-2-2b", {"sft.precision": "amp"}),
        ("google/gemma-2-9b", {})]
    md = compare_markdown.render_markdown(pooling.compare(cmp.group(exps)))
    assert "| google/gemma-2-2b (sft.precision=amp) | 2B | 1 | 40.0 |" in md


def test_across_students_old_layout_without_p_has_no_gain():
    result = pooling.compare(cmp.group([_exp("a", 0, 0.4), _exp("b", 1, 0.5)]))
    (row,) = result["students"]["rows"]
    cells = row["tasks"]["gsm8k"]
    assert row["student"] is None and row["size"] is None  # the literal experiments name no student
    assert cells["H"]["mean"] == pytest.approx(0.45) and cells["P"]["k"] == 0 and cells["P_minus_H"]["mean"] is None
    assert "| — | — | 2 | 45.0 ± 7.1 | — | — | — | — |" in compare_markdown.render_markdown(result)


# ---- a real git + DVC repo -------------------------------------------------------------------

STAGE = '''
import json, os
import yaml

p = yaml.safe_load(open("params.yaml"))
s, ep = p["base"]["seed"], p["sft"]["epochs"]

def ev(diff, half, n=200):
    return {"diff": diff, "ci95": [diff - half, diff + half], "n": n}

def verdict(kind, e, margin=0.1):
    lo, hi = e["ci95"]
    if kind == "equivalent":
        if -margin <= lo and hi <= margin:
            return "holds"
        return "contradicted" if hi < -margin or lo > margin else "inconclusive"
    if kind == "less":
        lo, hi = -hi, -lo
    return "holds" if lo > 0 else ("contradicted" if hi < 0 else "inconclusive")

h = 0.40 + 0.02 * s + 0.1 * (ep - 1)
summary = {"gsm8k": {"teacher_acc": 0.3, "n_test": 200,
                     "base": {"acc": 0.10, "lo": 0.06, "hi": 0.15},
                     "H": {"acc": h, "lo": h - 0.07, "hi": h + 0.07, "d_base": h - 0.10, "loss": 1.0 + 0.1 * s},
                     "G": {"acc": 0.50 - 0.03 * s, "lo": 0.4, "hi": 0.6, "d_base": 0.4 - 0.03 * s}}}
c2, g, w = ev(0.02 + 0.01 * s, 0.045), ev(0.3, 0.1, 120), ev(-0.01 * s, 0.05, 120)
c5, c6 = ev(-0.02, 0.06), ev(-0.1, 0.05)
parts_v = [verdict("greater", g), verdict("greater", w)]
c1_v = "holds" if parts_v == ["holds", "holds"] else ("contradicted" if "contradicted" in parts_v else "inconclusive")

def claim(cid, statement, kind, v, evidence):
    return {"id": cid, "task": "gsm8k", "statement": statement, "kind": kind, "verdict": v, "evidence": evidence}

claims = {"margin": 0.1, "claims": [
    claim("C2", "G beats H", "greater", verdict("greater", c2), c2),
    claim("C1", "G and W beat base", "greater", c1_v, {"parts": {"G": g, "W": w}}),
    claim("C5", "W as good as G", "equivalent", verdict("equivalent", c5), dict(c5, margin=0.1)),
    claim("C6", "mix-1.0 below mix-0", "less", verdict("less", c6), c6),
]}
if s == 2:  # the report's newer layout: per set {acc, ci, loss, step_acc}, no lo/hi/d_base/d_H
    summary["gsm8k"] = {k: {"acc": v["acc"], "ci": f"[{v['lo']:.3f}, {v['hi']:.3f}]", "step_acc": 1.0,
                            **({"loss": v["loss"]} if "loss" in v else {})} if isinstance(v, dict) else v
                        for k, v in summary["gsm8k"].items()}
os.makedirs("metrics", exist_ok=True)
json.dump(summary, open("metrics/summary.json", "w"))
json.dump(claims, open("metrics/claims.json", "w"))
# what produced the numbers: seed 2 as if run with another torch (compare must warn, naming it)
json.dump({"versions": {"torch": "2.12.0" if s == 2 else "2.13.0", "trl": "0.29.0"}, "cpu": "AMD EPYC"},
          open("metrics/provenance.json", "w"))
'''

DVC_YAML = """\
stages:
  report:
    cmd: python stage.py
    deps: [stage.py]
    params: [base.seed, sft.epochs]
    metrics:
      - metrics/summary.json:
          cache: false
      - metrics/claims.json:
          cache: false
      - metrics/provenance.json:
          cache: false
"""


def _sh(args, cwd, env):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.slow  # about 12 s on 2 shared cores: four dvc runs
def test_compare_real_dvc_experiments(tmp_path, capsys):
    repo = tmp_path / "repo"
    repo.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", DVC_NO_ANALYTICS="1", GIT_CONFIG_NOSYSTEM="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    dvc = [sys.executable, "-m", "dvc"]
    _sh(["git", "init", "-q", "."], repo, env)
    for k, v in (("user.name", "cotshape test"), ("user.email", "test@example.com"), ("commit.gpgsign", "false")):
        _sh(["git", "config", k, v], repo, env)
    _sh([*dvc, "init", "-q"], repo, env)
    (repo / "params.yaml").write_text("base:\n  seed: 0\n  tasks: [gsm8k]\nsft:\n  epochs: 1\n")
    (repo / "stage.py").write_text(textwrap.dedent(STAGE))
    (repo / "dvc.yaml").write_text(DVC_YAML)
    _sh([*dvc, "repro", "-q"], repo, env)
    _sh(["git", "add", "-A"], repo, env)
    _sh(["git", "commit", "-qm", "baseline: seed 0"], repo, env)
    _sh([*dvc, "exp", "run", "-q", "-S", "base.seed=1"], repo, env)
    _sh([*dvc, "exp", "run", "-q", "-S", "base.seed=2"], repo, env)
    _sh([*dvc, "exp", "run", "-q", "-S", "base.seed=1", "-S", "sft.epochs=2"], repo, env)

    out = tmp_path / "report"
    assert main(["compare", "--repo", str(repo), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "compared 4 experiments in 2 group(s)" in err
    res = json.loads((out / "compare.json").read_text())
    g1, g2 = res["groups"]
    # provenance read from each experiment's commit: seed 2's torch differs, named with every value
    (warning,) = g1["warnings"]
    assert "versions.torch (" in warning and ": 2.13.0, " in warning and ": 2.12.0)" in warning
    assert "trl" not in warning and "cpu" not in warning
    assert f"warning: sft.epochs=1: {warning}" in err and g2["warnings"] == []
    assert (g1["label"], g2["label"]) == ("sft.epochs=1", "sft.epochs=2")
    assert [e["seed"] for e in g1["experiments"]] == [0, 1, 2] and g1["experiments"][0]["kind"] == "baseline"

    # by hand from stage.py, seeds 0, 1, 2: H 0.40, 0.42, 0.44; G 0.50, 0.47, 0.44; H loss 1.0, 1.1, 1.2
    sets = g1["tasks"]["gsm8k"]["sets"]
    assert sets["H"]["acc"]["mean"] == pytest.approx(0.42) and sets["H"]["acc"]["sd"] == pytest.approx(0.02)
    assert sets["G"]["acc"]["mean"] == pytest.approx(0.47) and sets["G"]["acc"]["sd"] == pytest.approx(0.03)
    assert sets["H"]["loss"]["mean"] == pytest.approx(1.1) and sets["H"]["loss"]["sd"] == pytest.approx(0.1)
    assert sets["base"]["acc"]["sd"] == 0.0
    # seeds 0, 1 (old layout) carry d_base; seed 2 (new layout) has it derived as acc - base.acc
    assert sets["H"]["d_base"]["values"] == pytest.approx([0.30, 0.32, 0.34])
    assert sets["G"]["d_base"]["values"] == pytest.approx([0.40, 0.37, 0.34])
    h2 = g2["tasks"]["gsm8k"]["sets"]["H"]["acc"]
    assert h2["mean"] == pytest.approx(0.52) and h2["sd"] is None and h2["k"] == 1

    claims = {c["id"]: c for c in g1["claims"]}
    # C2: diffs 0.02, 0.03, 0.04 ± 0.045, n 200 each: every seed inconclusive. Fixed effect: mean
    # 0.03 ± 0.045 / sqrt 3 -> [0.004, 0.056], holds; runs as the unit (tau 0, truncated HKSJ):
    # 0.03 ± t(2) (0.045 / 1.96) / sqrt 3 -> [-0.027, 0.087], inconclusive
    c2 = claims["C2"]
    assert c2["per_seed"] == ["inconclusive"] * 3 and c2["counts"] == {"inconclusive": 3}
    assert c2["pooled"]["diff"] == pytest.approx(0.03) and c2["pooled"]["n"] == 600
    half = T2 * 0.045 / Z95 / math.sqrt(3)
    assert c2["pooled"]["ci95"] == pytest.approx([0.03 - half, 0.03 + half])
    assert c2["pooled"]["verdict"] == "inconclusive" and c2["pooled"]["tau"] == 0.0
    fixed = 0.045 / math.sqrt(3)
    assert c2["pooled"]["fixed"]["ci95"] == pytest.approx([0.03 - fixed, 0.03 + fixed])
    assert c2["pooled"]["fixed"]["verdict"] == "holds"
    # C1: G part 0.3 ± 0.1 holds; W part 0, -0.01, -0.02 ± 0.05: inconclusive
    c1 = claims["C1"]
    assert c1["parts"]["G"]["verdict"] == "holds" and c1["parts"]["W"]["diff"] == pytest.approx(-0.01)
    assert c1["parts"]["W"]["verdict"] == "inconclusive" and c1["pooled"]["verdict"] == "inconclusive"
    # C5: -0.02 ± t(2) 0.06 / sqrt 3 = [-0.096, 0.056] inside ±0.1; C6: -0.1 ± t(2) 0.05 / sqrt 3 below 0
    assert claims["C5"]["pooled"]["verdict"] == "holds" and claims["C5"]["margin"] == 0.1
    assert claims["C6"]["pooled"]["verdict"] == "holds"
    h6 = T2 * 0.05 / Z95 / math.sqrt(3)
    assert claims["C6"]["pooled"]["ci95"] == pytest.approx([-0.1 - h6, -0.1 + h6])

    md = (out / "compare.md").read_text()
    assert "## sft.epochs=1 — 3 experiment(s), seeds 0, 1, 2" in md
    assert "| H | 42.0 ± 2.0 | 40.0 – 44.0 | 3 | 40.0 | 42.0 | 44.0 |" in md
    assert f"+0.030 [{0.03 - half:+.3f}, {0.03 + half:+.3f}] (k 3, τ 0.000, I² 0 %) | **inconclusive** |" in md

    # the same from a saved `dvc exp show --json`
    saved = tmp_path / "show.json"
    saved.write_text(_sh([*dvc, "exp", "show", "--json"], repo, env))
    assert main(["compare", "--repo", str(repo), "--json", str(saved), "--out", str(tmp_path / "r2")]) == 0
    assert json.loads((tmp_path / "r2" / "compare.json").read_text())["groups"] == res["groups"]


def test_step_sets_sort_by_k_before_the_mixtures():
    sets = ["mix-0.5", "step-10", "P", "step-2", "base", "step-1", "mix-0.25"]
    assert sorted(sets, key=pooling.set_order) == ["base", "P", "step-1", "step-2", "step-10", "mix-0.25", "mix-0.5"]


def _repool_module():
    """scripts/repool_compare.py, imported (scripts/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("repool", Path(__file__).resolve().parents[1] / "scripts/repool_compare.py")
    repool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(repool)
    return repool


def test_repool_script_rebuilds_per_seed_differences_from_a_committed_comparison(tmp_path):
    """scripts/repool_compare.py: the comparison keeps per-seed accuracies; the run-level interval
    is rebuilt from them (t-interval: the per-seed intervals are not in an old compare.json)."""
    repool = _repool_module()
    g_diffs = [0.17, 0.125, 0.015]
    exps = [_exp(f"e{i}", i, 0.5, G={"acc": 0.5 + d}, claims={"claims": [_claim("C2", "greater", d, 0.06)]})
            for i, d in enumerate(g_diffs)]
    res = pooling.compare(cmp.group(exps))
    for c in res["groups"][0]["claims"]:  # an old comparison: no per-seed intervals
        c["pooled"].pop("per_seed_ci95")
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(res))
    assert repool.main([str(path)]) == 0
    (c,) = json.loads(path.read_text())["groups"][0]["claims"]
    assert c["pooled"]["per_seed"] == pytest.approx(g_diffs)
    assert c["pooled"]["ci95"] == pytest.approx(stats.t_interval(g_diffs)) and c["pooled"]["verdict"] == "inconclusive"
    assert c["pooled"]["fixed"]["verdict"] == "holds"  # the former pooled interval, kept as secondary
    assert "Re-pooled by scripts/repool_compare.py" in (tmp_path / "compare.md").read_text()
    path.write_text("{}")
    assert repool.main([str(path)]) == 2


def test_repool_script_pools_again_from_each_experiments_claims(tmp_path):
    """--claims: the claims are pooled from each experiment's claims.json by compare's own code;
    two draws of one base.seed share their problems (draws x problems); a missing file: exit 2."""
    repool = _repool_module()
    members = _draws_of_one_problem_set([0.05, 0.06], 0.0588, 0.03)
    res = pooling.compare(cmp.group(members))
    path = tmp_path / "compare.json"
    path.write_text(json.dumps(res))
    files = []
    for m in members:
        files.append(tmp_path / f"{m.name}.json")
        files[-1].write_text(json.dumps(m.claims))
    assert repool.main([str(path), "--claims", *map(str, files)]) == 0
    (c,) = json.loads(path.read_text())["groups"][0]["claims"]
    assert c["pooled"]["method"] == pooling.SHARED_METHOD and c["pooled"]["per_seed"] == pytest.approx([0.05, 0.06])
    assert repool.main([str(path), "--claims", str(files[0])]) == 2  # one file for two experiments


def test_the_committed_comparison_is_what_its_committed_claims_pool_to(tmp_path):
    """compare/compare.json (three data draws of the default) is rebuilt unchanged from the three
    experiments' committed metrics/claims.json: the README's pooled verdicts follow from them."""
    root = Path(__file__).resolve().parents[1]
    repool = _repool_module()
    committed = json.loads((root / "compare/compare.json").read_text())
    copy = tmp_path / "compare.json"
    copy.write_text(json.dumps(committed))
    claims = [root / "compare" / f for f in ("seed-0-claims.json", "data-seed-1/claims.json", "data-seed-2/claims.json")]
    assert repool.main([str(copy), "--claims", *map(str, claims)]) == 0
    rebuilt = json.loads(copy.read_text())
    assert rebuilt.pop("pooling").startswith(committed.pop("pooling"))  # + "Re-pooled by scripts/..."
    assert rebuilt == committed
    # the committed run's claims are the ones kept beside the comparison
    assert json.loads((root / "metrics/claims.json").read_text()) == json.loads(claims[0].read_text())


def test_seeds_with_several_runs_pool_their_run_level_intervals_and_split_the_variance():
    """Each seed (data draw) trained three runs per arm: the pooled interval combines the seeds'
    run-level intervals, and the variance splits into data draw, SFT seed and test problems."""
    per_seed = [[0.10, 0.12, 0.08], [0.20, 0.22, 0.18], [0.0, 0.02, -0.02]]  # the draws disagree
    exps = []
    for i, runs in enumerate(per_seed):
        re = random_effects.random_effects_difference(runs, [0.03] * 3)
        ev = {"diff": re["diff"], "ci95": re["ci95"], "n": 200, "runs": 3, "per_run": runs,
              "per_run_ci95": [[d - 0.0588, d + 0.0588] for d in runs]}
        exps.append(_exp(f"e{i}", i, 0.4, claims={"claims": [{"id": "C2", "task": "gsm8k", "statement": "s",
                                                               "kind": "greater", "verdict": "holds",
                                                               "evidence": ev}]}))
    result = pooling.compare(cmp.group(exps))
    (c,) = result["groups"][0]["claims"]
    assert c["pooled"]["k"] == 3 and c["pooled"]["verdict"] == "inconclusive"
    vc = c["variance"]
    assert vc["draws"] == 3 and vc["runs"] == [3, 3, 3]
    assert vc["parts"]["data"]["share"] > 0.8  # the draws differ by 10 points, the runs by 2
    assert vc["parts"]["sft"]["var"] == pytest.approx(0.0004)  # the runs' own spread (2 points)
    text = compare_markdown.render_markdown(result)
    assert "### Where the variance of each claim's difference comes from" in text
    assert "| C2 | gsm8k | 3 | 3/3/3 |" in text


def test_a_seed_with_one_run_pools_on_its_own_paired_interval():
    """One run per arm gives no run-level interval inside the experiment (ci95 None); across
    seeds its own test-problem interval is what it contributes, as before runs existed."""
    ev = [{"diff": d, "ci95": None, "n": 200, "runs": 1, "per_run": [d], "per_run_ci95": [[d - 0.06, d + 0.06]],
           "reason": "one training run"} for d in (0.17, 0.125, 0.015)]
    exps = [_exp(f"e{i}", i, 0.4, claims={"claims": [{"id": "C2", "task": "gsm8k", "statement": "s",
                                                       "kind": "greater", "verdict": "inconclusive",
                                                       "evidence": e}]}) for i, e in enumerate(ev)]
    (c,) = pooling.compare(cmp.group(exps))["groups"][0]["claims"]
    assert c["pooled"]["k"] == 3 and c["pooled"]["per_seed"] == pytest.approx([0.17, 0.125, 0.015])
    assert c["variance"] is None  # no seed has two runs: no SFT part to split off


def test_per_source_seeds_group_with_base_seed():
    """A `-S base.data_seed=1` experiment is another draw of the same configuration: it joins the
    group of base.seed 0 (labelled by its data seed), unlike a change of any other param."""
    a = _exp("main", 0, 0.4)
    b = _exp("draw", 0, 0.45)
    b.params["base.data_seed"] = 1
    c = _exp("sweep", 0, 0.5, epochs=3)
    groups = cmp.group([a, b, c])
    assert [[m.name for m in g.members] for g in groups] == [["main", "draw"], ["sweep"]]
    assert b.seed == "0 (data 1)" and a.seed == 0


def test_variance_breakdown_script_splits_data_sft_and_test_problems(tmp_path):
    """scripts/variance_breakdown.py: runs on one draw give SFT + test problems, seeds of the whole
    pipeline give data + SFT + test problems; the data draw's part is the difference."""
    from cotshape.core.random_effects import variance_components

    within = variance_components([[0.10, 0.12, 0.08, 0.10]], [[0.03 ** 2] * 4])  # sd 1.6 pts, below the se
    claims = {"variance": {"gsm8k": {"claims": {"C2": {**within, "contrast": "G - H"}}, "sets": {}}}}
    compare = {"groups": [{"experiments": [{"seed": 0}, {"seed": 1}, {"seed": 2}],
                           "claims": [{"id": "C2", "task": "gsm8k", "pooled": {"per_seed": [0.17, 0.125, 0.015]}}],
                           "tasks": {"gsm8k": {"sets": {}}}}]}
    (tmp_path / "claims.json").write_text(json.dumps(claims))
    (tmp_path / "compare.json").write_text(json.dumps(compare))
    out = tmp_path / "variance.md"
    proc = subprocess.run([sys.executable, "scripts/variance_breakdown.py", "--claims", str(tmp_path / "claims.json"),
                           "--compare", str(tmp_path / "compare.json"), "--out", str(out)],
                          capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    total = statistics_variance([0.17, 0.125, 0.015])
    data_sd = 100 * math.sqrt(total - within["within"] - 0.03 ** 2)
    row = next(ln for ln in out.read_text().splitlines() if ln.startswith("| C2 (G - H) |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{100 * math.sqrt(total):.1f}"
    assert cells[3].startswith(f"{data_sd:.1f} (")  # the seeds disagree far beyond the runs: the data draw
    assert cells[4].startswith(f"{100 * math.sqrt(within['within']):.1f} (")  # the runs' spread: SFT seed


def statistics_variance(xs):
    m = sum(xs) / len(xs)
    return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)


def test_markdown_orders_set_rows_as_pooling_does_also_from_saved_json():
    """A compare.json read back has its sets in key order (G, H, P, W, ...); the table still lists
    base, H, G, W, P, step-K, then the mixtures by fraction."""
    import json

    from conftest import REPO_ROOT

    from cotshape.reporting.compare_markdown import render_markdown

    # the committed comparison with a step set and four mixtures (the previous default's data draws)
    result = json.loads((REPO_ROOT / "compare" / "smollm2-own-student-data-draws" / "compare.json").read_text())
    for g in result["groups"]:
        for t in g["tasks"].values():
            t["sets"] = dict(sorted(t["sets"].items()))
    lines = render_markdown(result).splitlines()
    start = lines.index("### gsm8k: accuracy (%) per set")
    rows = [ln.split("|")[1].strip() for ln in lines[start + 4:] if ln.startswith("| ")][:10]
    assert rows == ["base", "H", "G", "W", "P", "step-1", "mix-0.25", "mix-0.5", "mix-0.75", "mix-1.0"]


def test_across_students_claims_one_experiment_each_keep_their_run_level_verdicts():
    """Two students, one experiment each (the committed cross-student comparison): each row shows
    each claim's own verdict and run-level interval, C1 part by part; a student pooled over two
    seeds gets the pooled verdict with k."""
    def exp(seed, student, c2, c2_verdict):
        e = _new_layout(seed, student, 0.5, 0.5 + c2, 0.45, 0.4)
        c1 = {"id": "C1", "task": "gsm8k", "kind": "greater", "verdict": "holds", "statement": "",
              "evidence": {"parts": {"G": {"diff": 0.23, "ci95": [0.12, 0.34], "verdict": "holds"},
                                     "W": {"diff": -0.05, "ci95": [-0.1, 0.01], "verdict": "inconclusive"}}}}
        e.claims = {"claims": [c1, _claim("C2", "greater", c2, 0.063, verdict=c2_verdict, runs=4)]}
        return e

    result = pooling.compare(cmp.group([exp(0, "smollm2-135m-instruct", 0.12, "holds"),
                                        exp(0, "gemma3-270m", -0.2, "contradicted")]))
    smol, gemma = result["students"]["rows"]
    assert smol["student"] == "smollm2-135m-instruct" and gemma["student"] == "gemma3-270m"
    c2 = gemma["claims"]["gsm8k"]["C2"]
    assert c2["verdict"] == "contradicted" and c2["runs"] == 4 and c2["k"] == 1
    assert c2["ci95"] == pytest.approx([-0.263, -0.137])
    assert gemma["claims"]["gsm8k"]["C1"]["parts"]["W"]["verdict"] == "inconclusive"
    md = compare_markdown.render_markdown(result)
    assert "### gsm8k: claims by student" in md and "| student | C1 | C2 |" in md
    assert ("| gemma3-270m | **holds** G +0.230 [+0.120, +0.340]; W -0.050 [-0.100, +0.010] | "
            "**contradicted** -0.200 [-0.263, -0.137], runs 4 |") in md
    pooled = pooling.compare(cmp.group([exp(0, "gemma3-270m", -0.2, "contradicted"),
                                        exp(1, "gemma3-270m", -0.18, "contradicted")]))
    (row,) = pooled["students"]["rows"]
    assert row["claims"]["gsm8k"]["C2"]["k"] == 2
    assert row["claims"]["gsm8k"]["C2"]["verdict"] == pooled["groups"][0]["claims"][1]["pooled"]["verdict"]
