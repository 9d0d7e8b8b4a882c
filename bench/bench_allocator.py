"""The allocator a stage runs on: glibc (tuned by ``reuse_freed_memory``) against jemalloc
(what :func:`cotshape.core.allocator.exec_with_jemalloc` preloads), on the same SFT run.

Each allocator trains the same LoRA run in its own process, glibc first, the way the sft stage
trains run 0 of G: params.yaml's ``sft`` and ``base.prompt_format`` (plain prompts for the
default's base student), the default's G records on its training problems, ``--steps`` optimizer
steps (18 is the whole run). Needs the pipeline's outputs (``dvc repro``, or ``dvc pull``). Prints
each time of ``trainer.train()``, the ratio, and whether the per-step losses are identical
(the allocator must change no result).

    .venv/bin/python bench/bench_allocator.py --model models/student --steps 18
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def child(model: str, steps: int, task: str, set_name: str) -> None:
    import dataclasses

    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from cotshape.core.allocator import active_allocator
    from cotshape.core.artifacts import TRAIN_LOG
    from cotshape.core.records import read_ids, read_jsonl, restrict_to_ids
    from cotshape.pipeline.stage import params
    from cotshape.sft.tokenize import prompt_format_kwargs
    from cotshape.sft.train import sft_tokenizer, train_sft

    p = params()
    sets, ids = Path("data/sets") / task / f"{set_name}.jsonl", Path("data/train_ids") / f"{task}.json"
    problems = Path("data/prepared") / task / "train.jsonl"
    for path in (sets, ids, problems):
        if not path.exists():
            raise SystemExit(f"{path}: missing (run `dvc repro` or `dvc pull` first)")
    records = restrict_to_ids(read_jsonl(sets), read_ids(ids))
    kw = prompt_format_kwargs(p.base.prompt_format, task, problems)
    kw["tokenizer"] = sft_tokenizer(model)
    sft = dataclasses.replace(p.sft, seed=p.base.seed_of("sft"), max_steps=steps)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = train_sft(model, records, Path(tmp) / "out", sft, **kw)
        log = json.loads((Path(tmp) / "out" / TRAIN_LOG).read_text())
    print(json.dumps({"allocator": active_allocator(), "train_s": log["train_time_s"],
                      "tokens_per_second": metrics["tokens_per_second"], "losses": [e["loss"] for e in log["log"]]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default=str(ROOT / "models" / "student"),
                    help="a local student folder (a relative path is taken from the repository root)")
    ap.add_argument("--steps", type=int, default=18, help="optimizer steps (the default's run has 18)")
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--set", default="G", help="the training set whose records are trained on")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args.model, args.steps, args.task, args.set)
    from cotshape.core.allocator import jemalloc_environ, jemalloc_library
    from cotshape.core.provenance import cpu_model

    library = jemalloc_library()
    if library is None:
        raise SystemExit("no jemalloc found (scripts/setup.sh installs one into .venv/lib/jemalloc)")
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--steps", str(args.steps),
           "--task", args.task, "--set", args.set]
    base = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "MALLOC_CONF")}
    results = {}
    for name, env in (("glibc", dict(base, COTSHAPE_ALLOCATOR="glibc")), ("jemalloc", jemalloc_environ(base, library))):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"the {name} child failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:9s} (mapped: {r['allocator']}): train {r['train_s']:.1f} s, {r['tokens_per_second']:.0f} tokens/s")
    g, j = results["glibc"], results["jemalloc"]
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; {args.steps} steps of {args.task} {args.set}")
    print(f"ratio (glibc / jemalloc train time): {g['train_s'] / j['train_s']:.2f}x; "
          f"losses {'identical' if g['losses'] == j['losses'] else 'DIFFER'}")


if __name__ == "__main__":
    main()
