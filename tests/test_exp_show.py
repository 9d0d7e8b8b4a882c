"""`dvc exp show` on the project itself stays readable (issue #13): at most 155 columns.

The limit was 150 until decontaminate@T (issue #25) added a stage between the sets and SFT: its
code fingerprint, the problems SFT trains on (data/train_ids/T.json) and three params
(decontaminate.ngram, fuzzy_threshold, action) took the default from 149 to 154 columns.

Counts what the default `dvc exp show` prints for one revision of this repository: its 5 fixed
columns (Experiment, rev, typ, Created, parent), one per number of metrics/summary.json (lists are
not shown by DVC), one per key of params.yaml, one per dep path of the stages. Real DVC, no model.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXED = 5
LIMIT = 155


def _leaves(d) -> int:
    if isinstance(d, dict):
        return sum(_leaves(v) for v in d.values())
    return 0 if isinstance(d, list) else 1


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                    reason="needs the project's git checkout")
def test_default_exp_show_has_at_most_155_columns():
    proc = subprocess.run([sys.executable, "-m", "dvc", "exp", "show", "--json", "--no-fetch"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(proc.stdout)
    workspace = next(r for r in rows if r.get("rev") == "workspace")["data"]
    metrics = sum(_leaves(m.get("data", {})) for m in workspace["metrics"].values())
    params = sum(_leaves(m.get("data", {})) for m in workspace["params"].values())
    deps = len(workspace["deps"])
    assert "metrics/summary.json" in workspace["metrics"] and list(workspace["metrics"]) == ["metrics/summary.json"]
    total = FIXED + metrics + params + deps
    print(f"dvc exp show: {total} columns = {FIXED} + {metrics} metrics + {params} params + {deps} deps")
    assert total <= LIMIT, f"{total} columns ({metrics} metrics, {params} params, {deps} deps) > {LIMIT}"
