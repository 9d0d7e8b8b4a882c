"""The report: tables from a literal metrics tree, missing files as dashes, valid PNGs."""

from __future__ import annotations

import json

import pytest

from cotshape.config import set_name as mix_set
from cotshape.records import RecordError
from cotshape.report import build_report, read_loss_csv

TASKS = ["gsm8k", "countdown"]
SETS = ["H", "G", "W", "P", "step"]
FRACTIONS = [0.0, 0.5, 1.0]
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
    }


def _write(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")


def make_tree(root):
    """Write a literal metrics tree of two tasks under ``root``; countdown-P's eval, countdown's
    mix-0.5 eval and countdown's select counts are missing."""
    metrics, plots = root / "metrics", root / "plots"
    evals = {
        ("gsm8k", "base"): _eval(1, 8, 24),
        ("gsm8k", "H"): _eval(3, 12, 24),
        ("gsm8k", "G"): _eval(6, 18, 24),
        ("gsm8k", "W"): _eval(5, 20, 24),
        ("gsm8k", "P"): _eval(4, 16, 24),
        ("gsm8k", "step"): _eval(2, 10, 24),
        ("gsm8k", "mix-0.0"): _eval(6, 12, 24),
        ("gsm8k", "mix-0.5"): _eval(3, 12, 24),
        ("gsm8k", "mix-1.0"): _eval(0, 12, 24),
        ("countdown", "base"): _eval(0, 0, 24),
        ("countdown", "H"): _eval(2, 4, 24),
        ("countdown", "G"): _eval(4, 8, 24),
        ("countdown", "W"): _eval(3, 6, 24),
        ("countdown", "step"): _eval(1, 2, 24),
        ("countdown", "mix-0.0"): _eval(4, 8, 24),
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
        _write(metrics / "paraphrase" / f"{t}.json", {"success_rate": 0.75, "n": 24})
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
    summary = _build(root, context={"student": "smollm2-135m-instruct"})
    return root, summary.read_text(encoding="utf-8")


@pytest.fixture
def text(built):
    return built[1]


def _build(tree, **kw):
    return build_report(
        tree / "metrics", tree / "plots", tree / "reports", TASKS, SETS, FRACTIONS, **kw
    )


def _section(text: str, title: str) -> str:
    """The text of the markdown section starting at heading ``title`` up to the next '## '."""
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_accuracy_table_has_both_definitions_and_counts(text):
    gsm = _section(text, "### gsm8k")
    assert "| G — teacher CoTs with a correct final answer | 25.0 % | 33.3 % | 75.0 % | 6 | 18 | 24 | +20.8 pts |" in gsm


def test_base_student_row_comes_first(text):
    gsm = _section(text, "### gsm8k")
    rows = [ln for ln in gsm.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert rows[0] == "| base — the untrained student | 4.2 % | 12.5 % | 33.3 % | 1 | 8 | 24 | — |"


def test_nothing_parsed_is_flagged_in_the_table(text):
    cd = _section(text, "### countdown")
    assert "| base — the untrained student | 0.0 % | 0.0 % (none parsed) | 0.0 % | 0 | 0 | 24 | — |" in cd


def test_missing_eval_file_is_a_dash_row(text):
    cd = _section(text, "### countdown")
    assert "| P — human solutions paraphrased by a model | — | — | — | — | — | — | — |" in cd


def test_skipped_set_shows_na_not_a_dash(tree):
    # what stages/evaluate.py and stages/sft.py write when the training set was empty
    _write(tree / "metrics" / "eval" / "gsm8k-W.json", {"n": 0, "skipped": 1})
    _write(tree / "metrics" / "sft" / "gsm8k-W.json", {"examples": 0, "skipped": 1})
    _write(tree / "metrics" / "eval" / "gsm8k-mix-0.5.json", {"n": 0, "skipped": 1})
    text = _build(tree).read_text(encoding="utf-8")
    assert (
        "| W — teacher CoTs with a wrong final answer (skipped: empty training set) "
        "| n/a | n/a | n/a | n/a | n/a | n/a | n/a |"
    ) in _section(text, "### gsm8k")
    assert "| W (skipped: empty training set) | 0 | n/a | n/a | n/a | n/a | n/a |" in _section(text, "## Fine-tuning")
    assert "| 50 % | n/a | n/a | — | — |" in _section(text, "## Flawed mixtures")
    assert "0.5," not in (tree / "plots" / "mixture" / "gsm8k.csv").read_text(encoding="utf-8")


def test_mixture_table_rows(text):
    mix = _section(text, "## Flawed mixtures")
    assert "| flawed fraction | gsm8k accuracy | gsm8k accuracy (parsed) | countdown accuracy | countdown accuracy (parsed) |" in mix
    assert "| 0 % | 25.0 % | 50.0 % | 16.7 % | 50.0 % |" in mix
    assert "| 50 % | 12.5 % | 25.0 % | — | — |" in mix
    assert "| 100 % | 0.0 % | 0.0 % | 4.2 % | 25.0 % |" in mix


def test_mixture_csv_for_dvc_plots_skips_missing_fractions(built):
    tree = built[0]
    assert (tree / "plots" / "mixture" / "gsm8k.csv").read_text(encoding="utf-8") == (
        "fraction,accuracy,accuracy_parsed\n0.0,0.25,0.5\n0.5,0.125,0.25\n1.0,0.0,0.0\n"
    )
    assert (tree / "plots" / "mixture" / "countdown.csv").read_text(encoding="utf-8") == (
        "fraction,accuracy,accuracy_parsed\n0.0,0.16666666666666666,0.5\n1.0,0.041666666666666664,0.25\n"
    )


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
    assert "| 50 % | — | — |" in text
    assert all((tmp_path / "out" / png).stat().st_size > 0 for png in PNGS)
    assert (tmp_path / "plots" / "mixture" / "gsm8k.csv").read_text(encoding="utf-8") == "fraction,accuracy,accuracy_parsed\n"


def test_headline_names_best_set(text):
    assert "- **gsm8k**: best set G with accuracy 25.0 % (base student: 4.2 %)." in text


def test_malformed_loss_csv_names_file_and_line(tree):
    bad = tree / "plots" / "loss" / "gsm8k-W.csv"
    bad.write_text("step,loss\n1,2.0\n2,oops\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"gsm8k-W\.csv:3: expected 'step,loss' numbers"):
        _build(tree)
    assert not (tree / "reports" / "summary.md").exists()


def test_loss_csv_with_wrong_header_is_an_error(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("epoch,value\n1,2\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"x\.csv:1: expected the header 'step,loss'"):
        read_loss_csv(path)


def test_invalid_metrics_json_names_the_file(tree):
    (tree / "metrics" / "eval" / "gsm8k-G.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(RecordError, match=r"gsm8k-G\.json:1: invalid JSON"):
        _build(tree)


def test_fraction_outside_unit_interval_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"flawed fraction 25 is outside \[0, 1\]"):
        build_report(tmp_path, tmp_path, tmp_path / "out", ["gsm8k"], SETS, [0.0, 25])
