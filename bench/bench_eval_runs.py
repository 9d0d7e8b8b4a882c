"""Benchmark: evaluating the LoRA training runs of one set, as the evaluate stage does, against
the stock way (issue #24 item 5, #23 item 5: remove duplicate work).

Stock: every run loads its base model afresh, merges its adapter, loads the tokenizer, and decodes
with glibc's default allocator (each step's large tensors are fresh mappings whose pages fault in).
cotshape: one :class:`cotshape.sft.checkpoints.LoraBase` (the base loaded once, its weights restored
before each merge), one tokenizer, and :func:`cotshape.core.allocator.reuse_freed_memory` (what
the transformers backend calls on CPU). Each way runs in its own child process (the allocator
setting is per process), one after the other (stock first, once each: rerun the script to see
the machine's spread), on the same runs and prompts; the script prints
both wall times, their ratio, whether the accuracies agree, and the CPU.

    python bench/bench_eval_runs.py --sft models/sft/gsm8k-G                  # after dvc repro
    python bench/bench_eval_runs.py --sft models/sft/gsm8k-G --prompts 64 --runs 2

``--sft``: an SFT output folder with ``run-R`` subfolders (LoRA). Greedy decoding of the first
``--prompts`` problems of ``--problems`` (default data/prepared/gsm8k/test.jsonl) with the
default's plain prompts, at most ``--max-new-tokens`` tokens, batch 128, dtype auto.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def child(args) -> None:
    import cotshape.core.allocator as allocator

    if args.child == "stock":
        allocator.reuse_freed_memory = lambda: False  # the backend imports it from the module at init
    from cotshape.core.artifacts import run_dirs
    from cotshape.core.models import load_tokenizer
    from cotshape.core.records import read_json, read_problems
    from cotshape.evaluation.evaluate import evaluate
    from cotshape.generation import get_backend
    from cotshape.sft.checkpoints import MARKER, LoraBase, load_trained
    from cotshape.tasks import get_task

    runs = run_dirs(Path(args.sft))[: args.runs]
    base = read_json(runs[0] / MARKER)["base_model"]
    task = get_task(args.task)
    problems = read_problems(args.problems)[: args.prompts]
    t0 = time.perf_counter()
    shared = LoraBase(base, dtype="auto") if args.child == "cotshape" else None
    tokenizer = load_tokenizer(base) if shared is not None else None
    accuracies, tokens = [], 0
    for run in runs:
        model = load_trained(run, device="cpu", dtype="auto", shared_base=shared)
        backend = get_backend("transformers", str(run), device="cpu", batch_size=128, model=model,
                              tokenizer=tokenizer or load_tokenizer(base))
        records, metrics = evaluate(task, problems, backend, max_new_tokens=args.max_new_tokens,
                                    prompt_format="plain", scoring="strict", progress=False)
        accuracies.append(metrics["accuracy"])
        tokens += sum(r["num_tokens"] for r in records)
        del backend, model
    print(json.dumps({"seconds": time.perf_counter() - t0, "accuracies": accuracies, "tokens": tokens}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sft", required=True, help="an SFT output folder with run-R subfolders (LoRA)")
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--problems", default="data/prepared/gsm8k/test.jsonl")
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--runs", type=int, default=4, help="at most this many runs of the set")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--child", choices=("stock", "cotshape"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)

    import torch

    from cotshape.core.provenance import cpu_model

    print(f"{args.sft}: {args.runs} run(s) at most, {args.prompts} prompts, greedy, <= {args.max_new_tokens} new "
          f"tokens; {cpu_model() or 'unknown CPU'}, {torch.get_num_threads()} threads", flush=True)
    result = {}
    for way in ("stock", "cotshape"):
        cmd = [sys.executable, __file__, "--child", way, *sys.argv[1:]]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout.strip().splitlines()[-1]
        result[way] = json.loads(out)
        r = result[way]
        print(f"{way:9s} {r['seconds']:7.1f} s  {r['tokens']:6d} tokens  accuracy per run {r['accuracies']}", flush=True)
    stock, ours = result["stock"], result["cotshape"]
    print(f"ratio (stock / cotshape wall time): {stock['seconds'] / ours['seconds']:.2f}x; "
          f"accuracies {'agree' if stock['accuracies'] == ours['accuracies'] else 'differ'}")


if __name__ == "__main__":
    main()
