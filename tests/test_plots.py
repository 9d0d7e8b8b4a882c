"""dvc.yaml's top-level plots render with DVC itself: `dvc plots show` writes its HTML, and each
plot overlays at least two series (sets, or tasks for the mixture curve) of the report's tables."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cotshape.reporting.report import build_report

REPO = Path(__file__).parent.parent
DVC = [sys.executable, "-m", "dvc"]


@pytest.fixture(scope="module")
def plots_repo(tmp_path_factory):
    """A git + DVC repository holding the project's top-level plots, its templates and the
    plots/summary tables the report writes for a literal metrics tree (tests/test_report.py's)."""
    from test_report import BASE_SET, FRACTIONS, SETS, TASKS, make_tree

    root = tmp_path_factory.mktemp("plots-repo")
    make_tree(root)
    build_report(root / "metrics", root / "plots", root / "reports", TASKS, SETS, FRACTIONS, base_set=BASE_SET)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=root, check=True)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    plots = yaml.safe_load((REPO / "dvc.yaml").read_text())["plots"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}, sort_keys=False))
    return root, plots


def test_every_top_level_plot_overlays_several_series(plots_repo):
    root, plots = plots_repo
    names = [next(iter(p)) for p in plots]
    assert {"loss curves", "accuracy by set", "closeness by set", "mixture curve"} <= set(names)
    out = subprocess.run([*DVC, "plots", "show", "--json"], cwd=root, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)["data"]
    for name in names:
        (plot,) = data[name]
        rows = plot["content"]["data"]["values"]
        assert rows, name
        key = "task" if name == "mixture curve" else "set"
        series = {r[key] for r in rows}
        assert len(series) >= 2, f"{name}: one series only ({series})"
        assert {r["task"] for r in rows} == {"gsm8k", "countdown"}, name  # every task in one figure


def test_dvc_plots_show_writes_html(plots_repo):
    root, _ = plots_repo
    subprocess.run([*DVC, "plots", "show", "-o", "html"], cwd=root, capture_output=True, text=True, check=True)
    html = (root / "html" / "index.html").read_text()
    assert html.count("vegaEmbed") >= 4 and "cotshape: SFT loss curves" in html
