"""The report: tables from a literal metrics tree, missing files as dashes, valid PNGs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cotshape.core.config import set_name as mix_set
from cotshape.core.records import RecordError
from cotshape.core.stats import wilson_interval
from cotshape.evaluation.claims import STATEMENTS, judge_task
from cotshape.reporting.report import build_report
from cotshape.reporting.report_data import read_loss_csv

TASKS = ["gsm8k", "countdown"]
SETS = ["H", "G", "W", "P", "step"]
# the nonzero fractions only: the curve's 0 % point is the base set itself (BASE_SET below)
FRACTIONS = [0.5, 1.0]
BASE_SET = "G"  # the pipeline default (degrade.base_set)
PNGS = ["accuracy.png", "mixture_curve.png", "loss_curves.png", "closeness.png"]


def _eval(n_correct: int, n_parsed: int, n: int) -> dict:
    return {
        "n": n,
        "n_correct": n_correct,
        "n_parsed": n_parsed,
        "accuracy": n_correct / n,
        "accuracy_parsed": n_correct / n_parsed if n_parsed else 0.0,
        "parse_rate": n_parsed / n,
        "no_parsed_answers": n_parsed == 0,
        "ci95": list(wilson_interval(n_correct, n)),
    }


def _cmp(diff: float, lo: float, hi: float) -> dict:
    return {"diff": diff, "ci95": [lo, hi]}


#: paired comparisons of gsm8k as cotshape.evaluation.claims computes them (countdown has none): G and W
#: beat the base student beyond noise, nothing beats H, step is below H
COMPARISONS = {
    "gsm8k": {
        "H": {"vs_base": _cmp(2 / 24, -0.04, 0.21)},
        "G": {"vs_base": _cmp(5 / 24, 0.05, 0.37), "vs_H": _cmp(3 / 24, -0.02, 0.27)},
        "W": {"vs_base": _cmp(4 / 24, 0.02, 0.31), "vs_H": _cmp(2 / 24, -0.06, 0.23)},
        "P": {"vs_base": _cmp(3 / 24, -0.01, 0.26), "vs_H": _cmp(1 / 24, -0.08, 0.16)},
        "step": {"vs_base": _cmp(1 / 24, -0.08, 0.17), "vs_H": _cmp(-1 / 24, -0.1, -0.01)},
    }
}


def _write(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def make_tree(root):
    """Write a literal metrics tree of two tasks under ``root``; countdown-P's eval, countdown's
    mix-0.5 eval and countdown's select counts are missing. There is no mix-0.0: the mixture
    curve's 0 % point is the base set (G)."""
    metrics, plots = root / "metrics", root / "plots"
    evals = {
        ("gsm8k", "base"): _eval(1, 8, 24),
        ("gsm8k", "H"): _eval(3, 12, 24),
        ("gsm8k", "G"): _eval(6, 18, 24),
        ("gsm8k", "W"): _eval(5, 20, 24),
        ("gsm8k", "P"): _eval(4, 16, 24),
        ("gsm8k", "step"): _eval(2, 10, 24),
        ("gsm8k", "mix-0.5"): _eval(3, 12, 24),
        ("gsm8k", "mix-1.0"): _eval(0, 12, 24),
        ("countdown", "base"): _eval(0, 0, 24),
        ("countdown", "H"): _eval(2, 4, 24),
        ("countdown", "G"): _eval(4, 8, 24),
        ("countdown", "W"): _eval(3, 6, 24),
        ("countdown", "step"): _eval(1, 2, 24),
        ("countdown", "mix-1.0"): _eval(1, 4, 24),
    }
    for (t, s), m in evals.items():
        _write(metrics / "eval" / f"{t}-{s}.json", m)
    for t in TASKS:
        for i, s in enumerate(SETS + [mix_set(p) for p in FRACTIONS]):
            first = 1.0 + 0.25 * i
            _write(
                metrics / "sft" / f"{t}-{s}.json",
                {
                    "train_loss": first - 0.2,
                    "first_loss": first,
                    "final_loss": first - 0.5,
                    "steps": 6,
                    "train_tokens": 4000,
                    "tokens_per_second": 210.5,
                    "examples": 24,
                },
            )
            (plots / "loss").mkdir(parents=True, exist_ok=True)
            (plots / "loss" / f"{t}-{s}.csv").write_text(
                "step,loss\n" + "".join(f"{k},{first - 0.1 * k}\n" for k in range(1, 7)), encoding="utf-8"
            )
        _write(
            metrics / "closeness" / f"{t}.json",
            {
                "H": {"mean_loss": 1.8, "perplexity": 6.05, "n_tokens": 3000, "n_examples": 24},
                "G": {"mean_loss": 0.9, "perplexity": 2.46, "n_tokens": 2500, "n_examples": 20},
                "W": {"mean_loss": 0.95, "perplexity": 2.59, "n_tokens": 2600, "n_examples": 22},
                "P": {"mean_loss": 1.2, "perplexity": 3.32, "n_tokens": 2800, "n_examples": 24},
            },
        )
        _write(metrics / "paraphrase" / f"{t}.json", {"success_rate": 0.75, "n": 24, **({"closeness_to_student": {
            "paraphraser": "student", "problems": 18, "loss_P": 0.951, "loss_H": 0.796, "H_minus_P": -0.155,
            "H_minus_P_ci95": [-0.21, -0.1]}} if t == "gsm8k" else {})})
        _write(metrics / "verify" / f"{t}.json", {"teacher_accuracy": 0.125, "samples": 96})
    _write(
        metrics / "select" / "gsm8k.json",
        {"problems": 24, "with_correct": 9, "with_wrong": 23, "with_both": 8, "selected_G": 9, "selected_W": 23},
    )
    return root


@pytest.fixture
def tree(tmp_path):
    """A fresh metrics tree, for tests that change it."""
    return make_tree(tmp_path)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report of the literal tree, built once (plots take about a second)."""
    root = make_tree(tmp_path_factory.mktemp("report"))
    summary = _build(root, context={"student": "smollm2-135m-instruct"}, comparisons=COMPARISONS)
    return root, summary.read_text(encoding="utf-8")


@pytest.fixture
def text(built):
    return built[1]


def _build(tree, **kw):
    kw.setdefault("base_set", BASE_SET)
    return build_report(
        tree / "metrics", tree / "plots", tree / "reports", TASKS, SETS, FRACTIONS, **kw
    )


def _section(text: str, title: str) -> str:
    """The text of the markdown section starting at heading ``title`` up to the next '## '."""
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


ACCURACY_HEADER = (
    "| set | accuracy | 95 % CI | accuracy (parsed) | parse rate | runs | n "
    "| Δ vs base [95 % CI] | Δ vs H [95 % CI] |"
)


def test_accuracy_table_has_both_definitions_interval_and_paired_differences(text):
    gsm = _section(text, "### gsm8k")
    assert ACCURACY_HEADER in gsm
    # Wilson interval of 6/24 = [0.120, 0.449]; the Δ columns come from COMPARISONS
    assert (
        "| G — teacher CoTs with a correct final answer | 25.0 % | [12.0, 44.9] | 33.3 % | 75.0 % | 1 | 24 "
        "| +20.8 pts [+5.0, +37.0] | +12.5 pts [-2.0, +27.0] |"
    ) in gsm
    # H has no difference against itself
    assert "| H — human-written solutions | 12.5 % | [4.3, 31.0] | 25.0 % | 50.0 % | 1 | 24 | +8.3 pts [-4.0, +21.0] | — |" in gsm
    assert "| parsed |" not in gsm  # the parsed-count column is gone (parse rate says it)


def test_paired_differences_are_dashes_without_comparisons(text):
    cd = _section(text, "### countdown")
    assert ACCURACY_HEADER in cd
    assert "| G — teacher CoTs with a correct final answer | 16.7 % | [6.7, 35.9] | 50.0 % | 33.3 % | 1 | 24 | — | — |" in cd


def test_base_student_row_comes_first(text):
    gsm = _section(text, "### gsm8k")
    rows = [ln for ln in gsm.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows[0] == "| base — the untrained student | 4.2 % | [0.7, 20.2] | 12.5 % | 33.3 % | 1 | 24 | — | — |"


def test_nothing_parsed_is_flagged_in_the_table(text):
    cd = _section(text, "### countdown")
    assert "| base — the untrained student | 0.0 % | [0.0, 13.8] | 0.0 % (none parsed) | 0.0 % | 1 | 24 | — | — |" in cd


def test_missing_eval_file_is_a_dash_row(text):
    cd = _section(text, "### countdown")
    assert "| P — human solutions paraphrased by a model | — | — | — | — | — | — | — | — |" in cd


def test_interval_is_a_dash_when_the_eval_metrics_lack_it(tree):
    # eval metrics written before score() returned ci95
    m = _eval(3, 12, 24)
    del m["ci95"]
    _write(tree / "metrics" / "eval" / "gsm8k-H.json", m)
    text = _build(tree).read_text(encoding="utf-8")
    assert "| H — human-written solutions | 12.5 % | — | 25.0 % | 50.0 % | 1 | 24 | — | — |" in _section(text, "### gsm8k")


def test_code_task_gets_a_pass_at_1_column(tree):
    _write(tree / "metrics" / "eval" / "gsm8k-H.json", dict(_eval(3, 12, 24), **{"pass@1": 0.125}))
    gsm = _section(_build(tree).read_text(encoding="utf-8"), "### gsm8k")
    assert (
        "| set | accuracy | 95 % CI | accuracy (parsed) | pass@1 | parse rate | runs | n "
        "| Δ vs base [95 % CI] | Δ vs H [95 % CI] |"
    ) in gsm
    assert "| H — human-written solutions | 12.5 % | [4.3, 31.0] | 25.0 % | 12.5 % | 50.0 % | 1 | 24 | — | — |" in gsm
    assert "| G — teacher CoTs with a correct final answer | 25.0 % | [12.0, 44.9] | 33.3 % | — | 75.0 % | 1 | 24 | — | — |" in gsm


def test_skipped_set_shows_na_not_a_dash(tree):
    # what stages/evaluate.py and stages/sft.py write when the training set was empty
    _write(tree / "metrics" / "eval" / "gsm8k-W.json", {"n": 0, "skipped": 1})
    _write(tree / "metrics" / "sft" / "gsm8k-W.json", {"examples": 0, "skipped": 1})
    _write(tree / "metrics" / "eval" / "gsm8k-mix-0.5.json", {"n": 0, "skipped": 1})
    text = _build(tree).read_text(encoding="utf-8")
    assert (
        "| W — teacher CoTs with a wrong final answer (skipped: empty training set) "
        "| n/a | n/a | n/a | n/a | n/a | n/a | n/a | n/a |"
    ) in _section(text, "### gsm8k")
    assert "| W (skipped: empty training set) | 0 | n/a | n/a | n/a | n/a | n/a |" in _section(text, "## Fine-tuning")
    assert "| 50 % | n/a | n/a | — | — |" in _section(text, "## Flawed mixtures")
    assert "gsm8k,0.5," not in (tree / "plots" / "summary" / "mixture.csv").read_text(encoding="utf-8")


def test_mixture_table_rows(text):
    mix = _section(text, "## Flawed mixtures")
    assert "| flawed fraction | gsm8k accuracy | gsm8k accuracy (parsed) | countdown accuracy | countdown accuracy (parsed) |" in mix
    # the 0 % point is the base set G itself (trained once), labelled with its name
    assert "| 0 % (G) | 25.0 % | 33.3 % | 16.7 % | 50.0 % |" in mix
    assert "| 50 % | 12.5 % | 25.0 % | — | — |" in mix
    assert "| 100 % | 0.0 % | 0.0 % | 4.2 % | 25.0 % |" in mix
    rows = [ln for ln in mix.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r.split(" | ")[0] for r in rows] == ["| 0 % (G)", "| 50 %", "| 100 %"]


def test_no_mix_0_set_anywhere(text):
    assert "mix-0.0" not in text
    assert "(0 % flawed)" not in text  # no "mix-0.0 (0 % flawed)" row in the training tables


def test_mixture_table_for_dvc_plots_skips_missing_fractions(built):
    tree = built[0]
    rows = (tree / "plots" / "summary" / "mixture.csv").read_text(encoding="utf-8").splitlines()
    # the 0.0 row is the base set's (G's) accuracy; countdown's mix-0.5 was not evaluated
    assert [r.split(",")[:3] for r in rows[1:]] == [
        ["gsm8k", "0.0", "0.25"], ["gsm8k", "0.5", "0.125"], ["gsm8k", "1.0", "0.0"],
        ["countdown", "0.0", "0.1667"], ["countdown", "1.0", "0.0417"]]
    assert not (tree / "plots" / "mixture").exists()


def test_mixture_curve_starts_at_the_default_base_set_h(tree):
    build_report(tree / "metrics", tree / "plots", tree / "reports", TASKS, SETS, FRACTIONS)
    assert "| 0 % (H) | 12.5 % | 25.0 % | 8.3 % | 50.0 % |" in _section(
        (tree / "reports" / "summary.md").read_text(encoding="utf-8"), "## Flawed mixtures")
    assert (tree / "plots" / "summary" / "mixture.csv").read_text(encoding="utf-8").splitlines()[1].startswith("gsm8k,0.0,0.125,")


def test_closeness_table_adds_first_sft_loss(text):
    close = _section(text, "## Distributional closeness")
    # H is the first set (first_loss 1.0), G the second (1.25); step has no closeness entry
    assert "| H | 1.800 | 6.05 | 1.000 | 3000 | 24 |" in close
    assert "| G | 0.900 | 2.46 | 1.250 | 2500 | 20 |" in close
    assert "| step | — | — | 2.000 | — | — |" in close


def test_select_counts_and_paraphrase_success(text):
    data = _section(text, "## Training data")
    assert "| gsm8k | 24 | 9 | 23 | 8 | 9 | 23 | 12.5 % | 75.0 % |" in data
    assert "| countdown | — | — | — | — | — | — | 12.5 % | 75.0 % |" in data
    # the paraphrase stage's check: P farther from the student than H here (H - P < 0)
    assert "| 0.951 / 0.796 (-0.155 [-0.210, -0.100], 18 problems) |" in data


def test_how_to_read_note_and_embedded_plots(text):
    assert "## How to read this" in text
    for png in PNGS:
        assert f"]({png})" in text


def test_context_is_listed_in_the_intro(text):
    assert "- **student**: smollm2-135m-instruct" in text.split("## Accuracy")[0]


def test_pngs_are_valid_images(built):
    from matplotlib.image import imread

    out = built[0] / "reports"
    for png in PNGS:
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", png
        img = imread(out / png)
        assert img.shape[0] > 200 and img.shape[1] > 400, (png, img.shape)


def test_empty_metrics_tree_still_builds(tmp_path):
    summary = build_report(tmp_path / "metrics", tmp_path / "plots", tmp_path / "out", ["gsm8k"], SETS, FRACTIONS)
    text = summary.read_text(encoding="utf-8")
    assert "- **gsm8k**: no trained student evaluated yet." in text
    assert "| 0 % (H) | — | — |" in text
    assert "| 50 % | — | — |" in text
    assert all((tmp_path / "out" / png).stat().st_size > 0 for png in PNGS)
    assert (tmp_path / "plots" / "summary" / "mixture.csv").read_text(encoding="utf-8") == "task,fraction,accuracy,lo,hi\n"


def test_headlines_list_sets_beyond_noise(text):
    assert (
        "- **gsm8k**: base student 4.2 % [0.7, 20.2]; above the base student beyond noise: G, W; "
        "above H: none; below H: step (paired 95 % intervals over the training runs; the others are ties)."
    ) in text
    # no comparisons for countdown: nothing is beyond noise
    assert (
        "- **countdown**: base student 0.0 % [0.0, 13.8]; above the base student beyond noise: none; "
        "above H: none; below H: none (paired 95 % intervals over the training runs; the others are ties)."
    ) in text


def test_headline_picks_no_best_set_out_of_a_tie(tree):
    # G and W have the same accuracy; only G's paired interval against the base lies above 0
    _write(tree / "metrics" / "eval" / "gsm8k-W.json", _eval(6, 18, 24))
    comparisons = {
        "gsm8k": {
            "G": {"vs_base": {"diff": 0.2, "ci95": [0.1, 0.3]}, "vs_H": {"diff": 0.0, "ci95": [-0.05, 0.05]}},
            "W": {"vs_base": {"diff": 0.2, "ci95": [-0.01, 0.4]}, "vs_H": {"diff": 0.0, "ci95": [-0.05, 0.05]}},
            "P": {"vs_base": {"diff": 0.0, "ci95": [0.0, 0.1]}},  # touching 0 is not above it
        }
    }
    text = _build(tree, comparisons=comparisons).read_text(encoding="utf-8")
    headlines = text.split("**Headlines**")[1].split("## ")[0]
    assert "best" not in headlines
    assert (
        "- **gsm8k**: base student 4.2 % [0.7, 20.2]; above the base student beyond noise: G; "
        "above H: none; below H: none (paired 95 % intervals over the training runs; the others are ties)."
    ) in headlines


def test_malformed_loss_csv_names_file_and_line(tree):
    bad = tree / "plots" / "loss" / "gsm8k-W.csv"
    bad.write_text("step,loss\n1,2.0\n2,oops\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"gsm8k-W\.csv:3: expected 'step,loss' numbers"):
        _build(tree)
    assert not (tree / "reports" / "summary.md").exists()


def test_loss_csv_with_wrong_header_is_an_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("epoch,value\n1,2\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"x\.csv:1: expected the header 'run,step,loss'"):
        read_loss_csv(path)


def test_invalid_metrics_json_names_the_file(tree):
    (tree / "metrics" / "eval" / "gsm8k-G.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RecordError, match=r"gsm8k-G\.json:1: invalid JSON"):
        _build(tree)


def test_fraction_outside_unit_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"flawed fraction 25 is outside \[0, 1\]"):
        build_report(tmp_path, tmp_path, tmp_path / "out", ["gsm8k"], SETS, [0.5, 25])


def _claim(cid: str, kind: str, verdict: str, evidence: dict) -> dict:
    return {"id": cid, "task": "gsm8k", "statement": STATEMENTS[cid], "kind": kind, "verdict": verdict,
            "evidence": evidence}


def test_claims_table_renders_every_verdict(tree):
    def pair(a, b, diff, lo, hi, p):
        return {"a": a, "b": b, "diff": diff, "ci95": [lo, hi], "p_mcnemar": p, "n": 24}

    claims = {"margin": 0.1, "claims": [
        _claim("C1", "greater", "holds", {"parts": {"G": {"diff": 0.9, "ci95": [0.8, 1.0]},
                                                    "W": {"diff": 0.85, "ci95": [0.7, 1.0]}}}),
        _claim("C2", "greater", "holds", pair("H", "G", 0.125, 0.05, 0.2, 0.0123)),
        _claim("C3", "greater", "contradicted", pair("H", "W", -0.2, -0.3, -0.1, 0.001)),
        _claim("C4", "greater", "inconclusive", {"missing": "no evaluation of H or P"}),
        _claim("C5", "equivalent", "inconclusive", dict(pair("G", "mix-0.25", -0.05, -0.2, 0.1, 0.5), margin=0.1)),
        _claim("C6", "less", "holds", {"diff": -0.25, "ci95": [-0.4, -0.1], "n": 24, "fractions": [0.0, 0.5, 1.0]}),
    ]}
    text = _build(tree, claims=claims).read_text(encoding="utf-8")
    section = _section(text, "## The paper's claims on this run")
    assert text.index("## The paper's claims on this run") < text.index("## Accuracy")  # near the top
    assert "| claim | task | statement | verdict | evidence (95 % CI) |" in section
    s = STATEMENTS
    assert (f"| C1 | gsm8k | {s['C1']} | **holds** | loss(H) − loss(G) = +0.900 [+0.800, +1.000]; "
            "loss(H) − loss(W) = +0.850 [+0.700, +1.000] |") in section
    assert f"| C2 | gsm8k | {s['C2']} | **holds** | G − H = +12.5 pts [+5.0, +20.0], 1 run(s) per arm, n = 24 |" in section
    assert (f"| C3 | gsm8k | {s['C3']} | **contradicted** | W − H = -20.0 pts [-30.0, -10.0], "
            "1 run(s) per arm, n = 24 |") in section
    assert f"| C4 | gsm8k | {s['C4']} | inconclusive | not measured: no evaluation of H or P |" in section
    assert (f"| C5 | gsm8k | {s['C5']} | inconclusive | mix-0.25 − G = -5.0 pts [-20.0, +10.0], "
            "1 run(s) per arm, n = 24, margin ±10 pts |") in section
    assert (f"| C6 | gsm8k | {s['C6']} | **holds** | slope -25.0 pts per unit fraction [-40.0, -10.0] "
            "over 0 %, 50 %, 100 %, 1 run(s) per set, n = 24 |") in section


def test_claims_of_judge_task_render_and_no_claims_no_section(tree):
    ids = [f"p{i:02d}" for i in range(24)]

    def right(k):
        return {pid: i < k for i, pid in enumerate(ids)}

    evals = {"base": right(1), "H": right(3), "G": right(6), "W": right(5), "P": None,
             "mix-0.5": right(3), "mix-1.0": right(0)}
    claims, comparisons = judge_task("gsm8k", evals, None, FRACTIONS, BASE_SET, 0.1, n_boot=200)
    assert len(claims) == 6
    text = _build(tree, claims={"margin": 0.1, "claims": claims},
                  comparisons={"gsm8k": comparisons}).read_text(encoding="utf-8")
    section = _section(text, "## The paper's claims on this run")
    for c in claims:
        assert c["verdict"] in {"holds", "contradicted", "inconclusive"}
        row = next(ln for ln in section.splitlines() if ln.startswith(f"| {c['id']} | gsm8k |"))
        assert c["verdict"] in row
    assert "| C4 | gsm8k |" in section and "not measured: no evaluation of H or P" in section
    # G is 5 problems above the base on the same problems: its Δ column is filled in
    assert "| G — teacher CoTs with a correct final answer | 25.0 % | [12.0, 44.9] | 33.3 % | 75.0 % | 1 | 24 | +20.8 pts (1 run: no interval) |" in text
    assert "## The paper's claims" not in _build(tree).read_text(encoding="utf-8")


def test_summary_csvs_for_the_top_level_plots(built):
    """plots/summary/*.csv: long format (task, set, ...), every set of every task, n/a rows for
    missing results instead of zeros."""
    import csv

    tree = built[0]

    def rows(name):
        with open(tree / "plots" / "summary" / name, encoding="utf-8") as fh:
            return list(csv.DictReader(fh))

    acc = rows("accuracy.csv")
    assert {(r["task"], r["set"]) for r in acc} >= {(t, s) for t in TASKS for s in ["base", *SETS]}
    g = next(r for r in acc if r["task"] == "gsm8k" and r["set"] == "G")
    lo, hi = wilson_interval(6, 24)
    assert float(g["accuracy"]) == 25.0 and float(g["lo"]) == round(100 * lo, 2) and float(g["hi"]) == round(100 * hi, 2)
    missing = next(r for r in acc if r["task"] == "countdown" and r["set"] == "P")  # its eval file is absent
    assert missing["accuracy"] == "" and missing["label"] == "n/a"
    loss = rows("loss.csv")
    assert {r["set"] for r in loss if r["task"] == "gsm8k"} >= {"H", "G"} and all(r["step"].isdigit() for r in loss)
    mix = rows("mixture.csv")
    assert [(r["task"], r["fraction"]) for r in mix if r["task"] == "gsm8k"] == [("gsm8k", "0.0"), ("gsm8k", "0.5"), ("gsm8k", "1.0")]
    assert all(float(r["lo"]) <= float(r["accuracy"]) <= float(r["hi"]) for r in mix)
    close = rows("closeness.csv")
    assert {r["set"] for r in close if r["task"] == "gsm8k"} >= {"H", "G", "W"}


def test_run_notes_say_which_prompts_and_scorers_a_run_used():
    """The report states the prompt format, the scorers and the evaluation budget of its run."""
    import importlib.util

    from cotshape.core.config import validate_params

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("report_stage", root / "stages" / "report.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    default = "\n".join(stage.run_notes(validate_params({})))
    assert "`base.prompt_format: plain`" in default and "`evaluate.scoring: strict`" in default
    assert "at most 128 new tokens" in default
    assert "**Teacher ≠ student** (teacher smollm2-135m-instruct, student gemma3-270m)" in default
    assert "by construction" not in default and "`paraphrase.model: " in default
    same = "\n".join(stage.run_notes(validate_params({"base": {"student": "smollm2-135m-instruct", "prompt_format": "chat"},
                                                     "paraphrase": {"model": "teacher"}})))
    assert "`base.prompt_format: chat`" in same and "**Teacher = student**" in same and "by construction" in same
    assert "rewritten by the teacher (`paraphrase.model: teacher`" in same
    paper = "\n".join(stage.run_notes(validate_params({"base": {"prompt_format": "plain"},
                                                      "evaluate": {"scoring": "paper", "max_new_tokens": "auto"}})))
    assert "`base.prompt_format: plain`" in paper and "Solution:" in paper
    assert "the authors' scorers (`evaluate.scoring: paper`" in paper and "4,096 Countdown" in paper


def test_checkpoint_section_next_to_the_final_model(tree):
    """sft.save_steps: each checkpoint's accuracy with its interval, the final model beside it,
    n/a for a step the run never reached, and no section at all without checkpoints."""
    ck = tree / "metrics" / "eval" / "checkpoints"
    _write(ck / "gsm8k-G-step-10.json", {"accuracy": 0.25, "ci95": [0.2, 0.31], "n": 200})
    _write(ck / "gsm8k-G-step-20.json", {"n": 0, "skipped": 1})
    text = _build(tree, checkpoints=[20, 10]).read_text(encoding="utf-8")
    section = _section(text, "## Intermediate checkpoints")
    assert "| set | step 10 | step 20 | final |" in section
    row = next(line for line in section.splitlines() if line.startswith("| G |"))
    assert "25.0 % [20.0, 31.0]" in row and "n/a" in row
    assert "## Intermediate checkpoints" not in _build(tree).read_text(encoding="utf-8")


def test_data_section_says_when_a_step_set_repeats_a_smaller_k(tree):
    _write(tree / "metrics" / "degrade" / "gsm8k.json", {"size": 71, "fewer_steps_than_k": {"step-1": 0, "step-2": 59}})
    section = _section(_build(tree).read_text(encoding="utf-8"), "## Training data")
    assert "gsm8k step-2: 59 of 71 CoTs have fewer than 2 reasoning steps" in section
    assert "step-1:" not in section


def test_runs_are_reported_one_row_each_with_the_variance_and_power(tree):
    """A set trained three times: the accuracy row is the mean with the run-level interval, the
    per-run table lists every run, the variance section splits the spread, the power line gives
    G - H's half-width, and the loss CSV with a run column draws one curve per run."""
    from cotshape.evaluation.claims import power, variance_breakdown
    from cotshape.evaluation.evaluate import score, summarize_runs

    ids = [f"p{i:02d}" for i in range(24)]

    def right(k):
        return {pid: i < k for i, pid in enumerate(ids)}

    def metrics_of(ks):
        return summarize_runs([score([{"correct": ok, "parsed": True} for ok in right(k).values()]) for k in ks],
                              [list(right(k).values()) for k in ks])

    ev_metrics = {"base": metrics_of([1]), "H": metrics_of([3, 5, 4]), "G": metrics_of([9, 12, 15])}
    for s in ("H", "G"):
        _write(tree / "metrics" / "eval" / f"gsm8k-{s}.json", ev_metrics[s])
    (tree / "plots" / "loss" / "gsm8k-G.csv").write_text("run,step,loss\n0,1,1.0\n0,2,0.5\n1,1,1.1\n1,2,0.6\n",
                                                         encoding="utf-8")
    evals = {"base": [right(1)], "H": [right(3), right(5), right(4)], "G": [right(9), right(12), right(15)]}
    claims, cmp = judge_task("gsm8k", evals, None, FRACTIONS, BASE_SET, 0.1, n_boot=200)
    doc = {"margin": 0.1, "claims": claims,
           "variance": {"gsm8k": {**variance_breakdown("gsm8k", ev_metrics, claims), "power": power(claims, "gsm8k")}}}
    text = _build(tree, claims=doc, comparisons={"gsm8k": cmp}).read_text(encoding="utf-8")
    gsm = _section(text, "## Accuracy")
    acc = ev_metrics["G"]
    lo, hi = acc["ci95"]
    assert f"| G — teacher CoTs with a correct final answer | 50.0 % | [{100 * lo:.1f}, {100 * hi:.1f}] |" in gsm
    assert acc["ci95_is"].startswith("training runs (3")
    # the run-level interval is at least as wide as the t-interval over the three runs' accuracies
    assert hi - lo >= 2 * 4.302652 * (3 / 24) / 3 ** 0.5 - 1e-6
    assert "| G | 0 | 37.5 % |" in text and "| G | 2 | 62.5 % |" in text  # one row per run
    assert "| G | 1 | 50.0 % | [" in text and "| 12 | +29.2 pts [" in text  # run 1: 12 right, Δ vs H run 1 (5 right)
    section = _section(text, "## Where the variance comes from")
    assert "| C2 (G - H) | 3 |" in section and "| accuracy of G | 3 |" in section
    half = 100 * doc["variance"]["gsm8k"]["power"]["half_width"]
    assert f"C2 (G − H) is ±{half:.1f} points wide with 3 training runs per arm" in section
    loss = (tree / "plots" / "summary" / "loss.csv").read_text(encoding="utf-8").splitlines()
    assert loss[0] == "task,set,run,step,loss" and "gsm8k,G,1,2,0.6" in loss


def test_evidence_names_what_each_arm_trained_when_the_runs_differ():
    """sft.runs_by_set: a comparison of H (7 runs) and W (4) pairs 4 runs and says so; so does the
    mixture slope over sets trained a different number of times."""
    from cotshape.reporting.sections import _evidence_text

    ev = {"a": "H", "b": "W", "diff": -0.25, "ci95": [-0.3, -0.2], "runs": 4, "runs_a": 7, "runs_b": 4, "n": 200,
          "per_run": [-0.3, -0.2, -0.25, -0.25]}
    text = _evidence_text({"id": "C3", "kind": "greater", "evidence": ev})
    assert "W − H = -25.0 pts [-30.0, -20.0], 4 paired runs (trained: H 7, W 4), n = 200" in text
    slope = {"diff": -0.3, "ci95": [-0.4, -0.2], "runs": 4, "n": 200, "fractions": [0.0, 0.25, 1.0],
             "per_run": [-0.3] * 4, "runs_by_set": {"G": 7, "mix-0.25": 4, "mix-1.0": 4}}
    assert "4 run(s) per set (runs 0..3 of each; trained: G 7, mix-0.25 4, mix-1.0 4)" in _evidence_text(
        {"id": "C6", "kind": "less", "evidence": slope})
