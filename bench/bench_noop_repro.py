"""Benchmark: wall time of a no-op ``dvc repro`` of the whole graph (issue 4: <= 2 s).

Run in the repository after a full ``dvc repro`` (nothing may be out of date: the script stops if
a stage would run). Times ``--runs`` no-op reproductions in two setups, interleaved:

* ``pure-Python YAML``: DVC as stock pip installs it without ``ruamel.yaml.clib`` (ruamel's
  pure-Python parser, forced here by clearing ruamel's C parser before DVC starts);
* ``cotshape``: the project's install, where ``ruamel.yaml.clib`` gives DVC ruamel's C parser for
  dvc.lock and for params.yaml (read once per stage).

    .venv/bin/python bench/bench_noop_repro.py --runs 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RUN_DVC = "import sys; from dvc.cli import main; sys.exit(main(sys.argv[1:]))"
RUN_DVC_PURE = "import ruamel.yaml.main as m; m.CParser = m.CEmitter = None; " + RUN_DVC


def repro(code: str) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, "repro"], cwd=ROOT, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if proc.returncode != 0 or "Running stage" in proc.stdout:
        sys.exit(f"bench_noop_repro: `dvc repro` is not a no-op here (rc {proc.returncode}); run `dvc repro` first.\n"
                 + proc.stdout[-2000:] + proc.stderr[-2000:])
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    from ruamel.yaml.main import CParser

    if CParser is None:
        sys.exit("bench_noop_repro: ruamel.yaml.clib is not installed (run scripts/setup.sh)")
    from ruamel.yaml import YAML

    text = (ROOT / "dvc.lock").read_text()
    stages = len(YAML(typ="safe").load(text)["stages"])
    print(f"dvc.lock: {text.count(chr(10))} lines; warming up ...")
    repro(RUN_DVC)
    times: dict[str, list[float]] = {"pure-Python YAML": [], "cotshape (C YAML)": []}
    for _ in range(args.runs):
        times["pure-Python YAML"].append(repro(RUN_DVC_PURE))
        times["cotshape (C YAML)"].append(repro(RUN_DVC))
    for name, ts in times.items():
        print(f"{name:>18}: median {statistics.median(ts):.2f} s (min {min(ts):.2f}, max {max(ts):.2f}) over {len(ts)} no-op runs")
    ratio = statistics.median(times["pure-Python YAML"]) / statistics.median(times["cotshape (C YAML)"])
    print(f"speed-up: {ratio:.2f}x; goal: no-op dvc repro <= 2 s (cotshape median "
          f"{statistics.median(times['cotshape (C YAML)']):.2f} s, {stages} stage entries in dvc.lock)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
