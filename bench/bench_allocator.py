"""The allocator a stage runs on: glibc (tuned by ``reuse_freed_memory``) against jemalloc
(what :func:`cotshape.core.allocator.exec_with_jemalloc` preloads), on the same SFT run.

Each allocator trains the same LoRA run in its own process (the default's settings, ``--steps``
optimizer steps on GSM8K-style records from reasoning-gym's ``gsm_symbolic``, offline), glibc
first. Prints each wall time of ``trainer.train()``, the ratio, and whether the per-step losses
are identical (the allocator must change no result).

    .venv/bin/python bench/bench_allocator.py --model models/student --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def child(model: str, steps: int) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_sft import make_records

    from cotshape.core.allocator import active_allocator
    from cotshape.sft.params import SFTParams
    from cotshape.sft.train import train_sft

    records = make_records(64)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        metrics = train_sft(model, records, Path(tmp) / "out", SFTParams(max_steps=steps, seed=0))
        wall = time.perf_counter() - t
        log = json.loads((Path(tmp) / "out" / "train_log.json").read_text())
    print(json.dumps({"allocator": active_allocator(), "wall_s": wall, "train_s": log["train_time_s"],
                      "tokens_per_second": metrics["tokens_per_second"], "losses": [e["loss"] for e in log["log"]]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(ROOT / "models" / "student"), help="a local student folder")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.model, args.steps)
    from cotshape.core.allocator import jemalloc_environ, jemalloc_library
    from cotshape.core.provenance import cpu_model

    library = jemalloc_library()
    if library is None:
        raise SystemExit("no jemalloc found (scripts/setup.sh installs one into .venv/lib/jemalloc)")
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--steps", str(args.steps)]
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    results = {}
    for name, env in (("glibc", dict(base, COTSHAPE_ALLOCATOR="glibc")), ("jemalloc", jemalloc_environ(base, library))):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:9s} (mapped: {r['allocator']}): train {r['train_s']:.1f} s, {r['tokens_per_second']:.0f} tokens/s")
    g, j = results["glibc"], results["jemalloc"]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.steps} steps")
    print(f"ratio (glibc / jemalloc train time): {g['train_s'] / j['train_s']:.2f}x; "
          f"losses {'identical' if g['losses'] == j['losses'] else 'DIFFER'}")


if __name__ == "__main__":
    main()
