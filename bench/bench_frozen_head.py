"""Benchmark: greedy decoding of a model with frozen weights (a merged LoRA student) through the
stock forward, with and without the contiguous LM-head input (issue #24 item 5).

A merged LoRA model has frozen weights (PEFT freezes the base). The stock forward's
``logits_to_keep=1`` hands the LM head ``hidden[:, -1:, :]``, a strided view; with frozen weights
``torch.matmul`` cannot fold it into one 2-D product and multiplies each row against its own copy
of the head's weight (for Gemma-3's 262k x 640 head: 5 GB at 16 rows, 40 GiB at 128, where
oneDNN's allocation fails). The transformers backend registers a pre-hook that makes the head's
input contiguous (``_contiguous_head_input`` in cotshape/generation/transformers_backend.py).
This script decodes the same test prompts twice in one process, with the hook and with it removed,
and prints both rates, their ratio and the CPU.

    python bench/bench_frozen_head.py                      # gemma3-270m, 64 gsm8k test prompts
    python bench/bench_frozen_head.py --model models/student --prompts 128

``--model``: a model folder, or an offline alias (materialised into a temporary folder first,
about a minute for gemma3-270m). Weights are frozen as after a LoRA merge; greedy, 128 new tokens.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m", help="model folder or offline alias (default gemma3-270m)")
    ap.add_argument("--prompts", type=int, default=64, help="gsm8k test prompts (default 64)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    args = ap.parse_args()

    import torch

    from cotshape.core.models import load_model, materialize
    from cotshape.core.provenance import cpu_model
    from cotshape.evaluation.evaluate import student_inputs
    from cotshape.generation import SamplingParams, get_backend
    from cotshape.tasks import get_task

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model)
        if not path.is_dir():
            print(f"materialising {args.model} ...", flush=True)
            path = materialize(args.model, Path(tmp) / "model")
        model = load_model(path, device="cpu", dtype="auto").requires_grad_(False)  # frozen, as merged
        backend = get_backend("transformers", str(path), device="cpu", batch_size=args.batch_size, model=model)
        task = get_task("gsm8k")
        problems = task.load("test", source="offline", limit=args.prompts, seed=0, level="easy")
        prompts = student_inputs(task, problems, "plain", backend.tokenizer)
        params = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens, n=1)
        head = model.get_output_embeddings()

        def run(label: str) -> tuple[float, int]:
            t0 = time.perf_counter()
            with torch.inference_mode():
                out = backend.generate(prompts, params)
            dt = time.perf_counter() - t0
            tokens = sum(c.num_tokens for o in out for c in o)
            print(f"{label:28s} {dt:7.1f} s  {tokens:6d} tokens  {tokens / dt:7.1f} tokens/s", flush=True)
            return tokens / dt, tokens

        print(f"{args.model}: {args.prompts} prompts, batch {args.batch_size}, greedy, <= {args.max_new_tokens} "
              f"new tokens, dtype {backend.dtype}, path: {backend.fused_reason or 'fused'}; {cpu_model() or 'unknown CPU'}, "
              f"{torch.get_num_threads()} threads")
        fast, _ = run("contiguous head input")
        hooks = dict(head._forward_pre_hooks)
        head._forward_pre_hooks.clear()  # the stock behaviour: the strided view goes to the head
        try:
            stock, _ = run("stock (strided) head input")
        finally:
            head._forward_pre_hooks.update(hooks)
        print(f"ratio (contiguous / stock): {fast / stock:.2f}x")


if __name__ == "__main__":
    main()
