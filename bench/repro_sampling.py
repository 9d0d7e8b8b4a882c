"""How reproducible are samples across resume, sharding and batch size? (issue: "same params ->
same samples").

Samples N problems of the default prepared train set with the default sampling params (the
teacher prompt with ``sample.shots`` exemplars), once uninterrupted (reference), then:

* ``resume``: a run that finds the reference's first half in its partial file (what a killed
  run leaves) and samples only the rest, in other batches;
* ``shards``: shard 0/2 and 1/2 sampled separately, then merged;
* ``batch B``: the uninterrupted run with another ``sample.batch_size``;
* ``repeat``: the reference settings again (same batches: should be 100 %).

Prints the share of samples whose completion is identical to the reference's. Every sample
draws the same random numbers in all runs (its own seeded generator); what differs is the
batch each sample is decoded in, and bf16 logits change in the last bits with it.

    .venv/bin/python bench/repro_sampling.py [--problems 24] [--batch 128] [--other-batch 32]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--other-batch", type=int, default=32)
    ap.add_argument("--data", default="data/prepared/gsm8k/train.jsonl")
    ap.add_argument("--model", default="models/teacher")
    args = ap.parse_args()

    from cotshape.core.config import load_params
    from cotshape.core.records import read_jsonl, read_problems
    from cotshape.data.sampling import (
        _write_partial,
        fingerprint,
        merge_shards,
        partial_path,
        run_sampling,
    )
    from cotshape.generation import get_backend
    from cotshape.generation.base import SamplingParams
    from cotshape.tasks import get_task

    p = load_params("params.yaml")
    task = get_task("gsm8k")
    problems = read_problems(args.data)[: args.problems]
    sp = SamplingParams(n=p.sample.k, temperature=p.sample.temperature, top_p=p.sample.top_p,
                        max_new_tokens=p.sample.max_new_tokens, stop=[], seed=p.base.seed)
    k, shots = p.sample.k, p.sample.shots
    backends = {}

    def backend(bs):
        if bs not in backends:
            backends[bs] = get_backend("transformers", args.model, device="cpu", dtype=p.base.dtype, batch_size=bs)
        return backends[bs]

    def run(out, bs=args.batch, shard=None):
        t = time.perf_counter()
        run_sampling(task, problems, backend(bs), k, sp, out, teacher=args.model, shard=shard, shots=shots,
                     show_progress=False)
        return {(r["problem_id"], r["sample_index"]): r["completion"] for r in read_jsonl(out)}, time.perf_counter() - t

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ref, secs = run(d / "ref.jsonl")
        results = {}
        results["repeat"], _ = run(d / "repeat.jsonl")
        # resume: the partial file a run killed after the first half would have left
        half = {x["id"] for x in problems[: len(problems) // 2]}
        out = d / "resume.jsonl"
        fp = fingerprint(task.name, args.model, k, SamplingParams(**{**sp.__dict__, "n": k}), None, problems, shots)
        done = [r for r in read_jsonl(d / "ref.jsonl") if r["problem_id"] in half]
        _write_partial(partial_path(out), fp, {}, done)
        results["resume (2nd half resampled)"], _ = run(out)
        for i in range(2):
            run(d / f"shard{i}.jsonl", shard=(i, 2))
        merge_shards([d / "shard0.jsonl", d / "shard1.jsonl"], d / "merged.jsonl", problems=problems, k=k)
        results["shards 0/2 + 1/2"] = {(r["problem_id"], r["sample_index"]): r["completion"]
                                       for r in read_jsonl(d / "merged.jsonl")}
        results[f"batch {args.other_batch}"], _ = run(d / "other.jsonl", bs=args.other_batch)

    n = len(ref)
    print(f"{len(problems)} problems x k={k}, shots {shots}, T={sp.temperature}, batch {args.batch}, "
          f"dtype {p.base.dtype}; reference run {secs:.0f} s")
    print(f"{'run':34s} identical samples")
    for name, got in results.items():
        same = sum(got.get(key) == c for key, c in ref.items())
        print(f"{name:34s} {same:4d}/{n} ({100 * same / n:.1f} %)")
    print(json.dumps({name: sum(got.get(key) == c for key, c in ref.items()) / n for name, got in results.items()}))


if __name__ == "__main__":
    main()
