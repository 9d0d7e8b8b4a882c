"""Benchmark: real (non-padding) tokens/s of the cotshape sampler against stock ``model.generate``.

In one run, on the same offline GSM8K prompts (the gsm8k task's offline source), SmolLM2-135M-
Instruct (the offline alias, materialised once into ``--cache``), k samples per prompt:

* stock ``model.generate`` with batch 16 (``--stock-dtype``, fp32 by default: the baseline of
  issue 3) and with batch 1 (on ``--batch1-prompts`` prompts, one sample each);
* transformers' own continuous batching (``model.generate_batch``, paged attention, the same
  sampling settings and dtype as the sampler; ``--skip-cb`` leaves it out);
* the cotshape transformers backend (continuous batching, ``--dtype``, ``--batch-size``): its
  decode loop alone, and the whole ``cotshape sample`` job as a subprocess (process start, model
  load, sampling, writing the JSONL; ``--skip-job`` leaves it out) against stock batch 16 with
  its model load;
* the same decode loop through the stock model forward (``fused=False``: the sampler before the
  fused Llama forward and the shared prompt prefix; ``--skip-unfused`` leaves it out);
* greedy evaluation through the same backend (``--eval-prompts`` test problems, one greedy
  completion each, ``evaluate.max_new_tokens`` = ``--max-new-tokens``), and both rates counting
  the prompt tokens prefilled too (evaluation prefills a prompt per completion, sampling one
  per k completions);
* a compute ceiling: tokens/s of one large prefill forward (pure matmul work, no decode overhead)
  in the sampler's dtype.

Real tokens are the generated tokens up to and including EOS (padding after EOS is not counted).
``--check-accuracy N``: greedy answers of N problems in fp32 and bf16, graded by the task.

    python bench/bench_sampling.py                       # full: 32 prompts, k=4, 256 tokens
    python bench/bench_sampling.py --prompts 8 --k 2     # a short check
    python bench/bench_sampling.py --check-accuracy 32 --skip-speed
    python bench/bench_sampling.py --shots 4 --k 8 --max-new-tokens 128 --skip-stock  # the sample stage's prompts

``--shots N`` puts the task's N worked exemplars before each problem, as the pipeline's sample
stage does (the default params: 4): every prompt then starts with the same ~540 tokens.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def real_tokens(seqs, prompt_width: int, eos_ids: set[int], pad_id: int) -> int:
    """Generated tokens per row up to and including the first EOS."""
    n = 0
    for row in seqs[:, prompt_width:].tolist():
        for t in row:
            n += 1
            if t in eos_ids:
                break
    return n


def stock_generate(model, tok, prompts, k, max_new, batch, temperature, top_p, seed) -> tuple[int, float]:
    """Stock HF ``generate`` over ``prompts`` x ``k`` in batches of ``batch``; (tokens, seconds)."""
    import torch
    from tqdm import tqdm

    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    rows = [t for t in texts for _ in range(k)]
    eos = {tok.eos_token_id}
    torch.manual_seed(seed)
    total, t0 = 0, time.perf_counter()
    bar = tqdm(range(0, len(rows), batch), desc=f"stock generate b={batch}", unit="batch")
    for s in bar:
        enc = tok(rows[s:s + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(
                **enc, max_new_tokens=max_new, do_sample=temperature > 0, temperature=temperature or None,
                top_p=top_p if temperature > 0 else None, top_k=None, pad_token_id=tok.pad_token_id,
            )
        total += real_tokens(out, enc["input_ids"].shape[1], eos, tok.pad_token_id)
        bar.set_postfix(tok_s=f"{total / (time.perf_counter() - t0):.0f}")
    return total, time.perf_counter() - t0


def transformers_cb(model, tok, prompts, k, max_new, temperature, top_p, eos_ids) -> tuple[int, float]:
    """transformers' continuous batching (``generate_batch``) on the same prompts; (tokens, seconds).
    ``num_return_sequences`` is not used: each prompt is queued k times (the same work)."""
    from transformers import GenerationConfig

    ids = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False) for p in prompts]
    ids = [list(x["input_ids"]) if isinstance(x, dict) else list(x) for x in ids]
    rows = [x for x in ids for _ in range(k)]
    cfg = GenerationConfig(do_sample=temperature > 0, temperature=temperature or None, top_p=top_p, top_k=None,
                           max_new_tokens=max_new, eos_token_id=sorted(eos_ids), pad_token_id=tok.pad_token_id)
    t0 = time.perf_counter()
    out = model.generate_batch(inputs=rows, generation_config=cfg, progress_bar=True)
    dt = time.perf_counter() - t0
    total = 0
    for r in out.values():
        for t in r.generated_tokens:
            total += 1
            if t in eos_ids:
                break
    return total, dt


def whole_job(cache: Path, prompts_file: Path, out: Path, args) -> tuple[int, float]:
    """``cotshape sample`` as a user runs it (new process: imports, model load, sampling, output);
    (real tokens, wall seconds)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "cotshape.cli", "sample", "--task", "gsm8k", "--problems", str(prompts_file),
           "--model", str(cache), "--out", str(out), "--k", str(args.k), "--max-new-tokens", str(args.max_new_tokens),
           "--temperature", str(args.temperature), "--top-p", str(args.top_p), "--seed", str(args.seed),
           "--batch-size", str(args.batch_size), "--dtype", args.dtype, "--device", "cpu", "--shots", str(args.shots)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.perf_counter() - t0
    ntok = sum(json.loads(line)["num_tokens"] for line in out.read_text().splitlines() if line.strip())
    return ntok, dt


ROW_BINS = (96, 64, 32, 1)


def rate_by_rows(marks: list[tuple[float, int]]) -> list[dict]:
    """Tokens/s of the sampler's steps grouped by how many rows the batch held (the batch
    decays as rows finish). ``marks``: (time, rows) after each step; the first mark (the prefill
    that starts the batch) is left out; with refills, later prefills fall in their rows' bin."""
    bins = [{"min_rows": lo, "steps": 0, "tokens": 0, "seconds": 0.0} for lo in ROW_BINS]
    for (t_prev, _), (t, rows) in itertools.pairwise(marks):
        b = next(b for b in bins if rows >= b["min_rows"])
        b["steps"] += 1
        b["tokens"] += rows
        b["seconds"] += t - t_prev
    total = sum(b["seconds"] for b in bins) or 1.0
    for b in bins:
        b["tok_s"] = b["tokens"] / b["seconds"] if b["seconds"] else 0.0
        b["share_of_time"] = b["seconds"] / total
    return [b for b in bins if b["steps"]]


def ceiling(model, tok, dtype_name: str) -> float:
    """Tokens/s of one [16, 128] forward: the matmul throughput decode can at best approach."""
    import torch

    ids = torch.randint(100, 20000, (16, 128))
    with torch.inference_mode():
        model(input_ids=ids[:2, :32])  # warm-up
        t0 = time.perf_counter()
        model(input_ids=ids, logits_to_keep=1)
        dt = time.perf_counter() - t0
    return ids.numel() / dt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/cotshape/smollm2-135m-instruct"))
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-p", type=float, default=0.95)
    ap.add_argument("--batch-size", type=int, default=128, help="cotshape sampler rows per step")
    ap.add_argument("--dtype", default="auto", help="cotshape sampler dtype")
    ap.add_argument("--stock-dtype", default="float32")
    ap.add_argument("--batch1-prompts", type=int, default=2)
    ap.add_argument("--skip-stock", action="store_true")
    ap.add_argument("--skip-cb", action="store_true", help="leave out transformers' continuous batching")
    ap.add_argument("--skip-job", action="store_true", help="leave out the whole-job (subprocess) figure")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-unfused", action="store_true", help="leave out the decode loop through the stock forward")
    ap.add_argument("--shots", type=int, default=0, help="worked exemplars before each problem (the sample stage: 4)")
    ap.add_argument("--eval-prompts", type=int, default=128, help="greedy evaluation figure on N problems (0: skip)")
    ap.add_argument("--check-accuracy", type=int, default=0, metavar="N")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the numbers to this file")
    args = ap.parse_args(argv)

    import torch

    from cotshape.core.models import load_model, load_tokenizer, materialize, resolve_dtype
    from cotshape.generation import SamplingParams, get_backend
    from cotshape.tasks import get_task

    cache = Path(args.cache)
    if not (cache / "config.json").exists():
        print(f"materialising smollm2-135m-instruct into {cache} (once)")
        materialize("smollm2-135m-instruct", cache)
    task = get_task("gsm8k")
    n_load = max(args.prompts, args.check_accuracy, args.eval_prompts)
    problems = task.load("test", source="offline", limit=n_load, seed=args.seed)
    prompts = [task.teacher_messages(p, args.shots) for p in problems[: args.prompts]]
    tok = load_tokenizer(cache)
    res: dict[str, float] = {"threads": torch.get_num_threads()}

    if not args.skip_speed:
        sampler_dtype = resolve_dtype(args.dtype, "cpu")
        if not args.skip_stock:
            t_load = time.perf_counter()
            model = load_model(cache, device="cpu", dtype=args.stock_dtype)
            res["stock_load_seconds"] = time.perf_counter() - t_load
            n16, t16 = stock_generate(model, tok, prompts, args.k, args.max_new_tokens, 16, args.temperature, args.top_p, args.seed)
            res["stock_b16_job_tok_s"] = n16 / (t16 + res["stock_load_seconds"])
            n1, t1 = stock_generate(model, tok, prompts[: args.batch1_prompts], 1, args.max_new_tokens, 1, args.temperature, args.top_p, args.seed)
            res.update(stock_b16_tok_s=n16 / t16, stock_b1_tok_s=n1 / t1)
            del model
        eos_ids = {tok.eos_token_id}
        if not args.skip_cb:
            cb_model = load_model(cache, device="cpu", dtype=args.dtype)
            eos_ids |= set(cb_model.generation_config.eos_token_id if isinstance(
                cb_model.generation_config.eos_token_id, list) else [cb_model.generation_config.eos_token_id])
            eos_ids.discard(None)
            try:
                ncb, tcb = transformers_cb(cb_model, tok, prompts, args.k, args.max_new_tokens, args.temperature,
                                           args.top_p, eos_ids)
                res.update(transformers_cb_tok_s=ncb / tcb, transformers_cb_tokens=ncb)
            except Exception as e:  # report, do not hide: the comparison is part of the benchmark
                res["transformers_cb_error"] = f"{type(e).__name__}: {e}"
            del cb_model
        if not args.skip_job:
            import tempfile

            from cotshape.core.records import write_jsonl

            with tempfile.TemporaryDirectory() as d:
                pf = Path(d) / "problems.jsonl"
                write_jsonl(pf, problems[: args.prompts])
                njob, tjob = whole_job(cache, pf, Path(d) / "samples.jsonl", args)
            res.update(job_tok_s=njob / tjob, job_seconds=tjob)
        backend = get_backend("transformers", cache, device="cpu", dtype=args.dtype, batch_size=args.batch_size)
        res["ceiling_tok_s"] = ceiling(backend.model, tok, str(sampler_dtype))
        from tqdm import tqdm

        bar = tqdm(desc=f"cotshape sampler ({str(sampler_dtype).replace('torch.', '')}, b={args.batch_size})", unit="tok", mininterval=5)
        params = SamplingParams(n=args.k, temperature=args.temperature, top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, seed=args.seed)
        marks: list[tuple[float, int]] = []  # (time, rows) after each prefill or decode step

        def progress(rows: int) -> None:
            marks.append((time.perf_counter(), rows))
            bar.update(rows)

        t0 = time.perf_counter()
        out = backend.generate(prompts, params, progress=progress)
        dt = time.perf_counter() - t0
        bar.close()
        res["rows_bins"] = rate_by_rows(marks)
        ntok = sum(c.num_tokens for cs in out for c in cs)
        res["sampler_processed_tok_s"] = (backend.prompt_tokens(prompts) + ntok) / dt
        res.update(sampler_tok_s=ntok / dt, sampler_tokens=ntok, sampler_seconds=dt,
                   sampler_length_finished=sum(c.finish_reason == "length" for cs in out for c in cs) / (len(out) * args.k))
        if args.eval_prompts:
            greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens)
            eval_prompts = [task.teacher_messages(p, args.shots) for p in problems[: args.eval_prompts]]
            t0 = time.perf_counter()
            eout = backend.generate(eval_prompts, greedy)
            edt = time.perf_counter() - t0
            etok = sum(c.num_tokens for cs in eout for c in cs)
            res.update(eval_tok_s=etok / edt, eval_seconds=edt,
                       eval_processed_tok_s=(backend.prompt_tokens(eval_prompts) + etok) / edt)
        del backend
        if not args.skip_unfused:
            from cotshape.generation.transformers_backend import TransformersBackend

            stock_fwd = TransformersBackend(cache, device="cpu", dtype=args.dtype, batch_size=args.batch_size, fused=False)
            t0 = time.perf_counter()
            uout = stock_fwd.generate(prompts, params)
            udt = time.perf_counter() - t0
            res.update(unfused_tok_s=sum(c.num_tokens for cs in uout for c in cs) / udt)
            del stock_fwd
        print(f"\nSmolLM2-135M, {len(prompts)} prompts x k={args.k}, max_new_tokens={args.max_new_tokens}, "
              f"{args.shots}-shot prompts, {torch.get_num_threads()} threads")
        if "stock_b16_tok_s" in res:
            print(f"  stock generate batch 1  ({args.stock_dtype}): {res['stock_b1_tok_s']:8.1f} real tok/s")
            print(f"  stock generate batch 16 ({args.stock_dtype}): {res['stock_b16_tok_s']:8.1f} real tok/s")
        print(f"  cotshape sampler ({sampler_dtype}, batch {args.batch_size}): {res['sampler_tok_s']:8.1f} real tok/s "
              f"({ntok} tokens in {dt:.1f} s)")
        if "unfused_tok_s" in res:
            res["speedup_vs_unfused"] = res["sampler_tok_s"] / res["unfused_tok_s"]
            print(f"  same decode loop, stock model forward (the sampler before #14): {res['unfused_tok_s']:8.1f} "
                  f"real tok/s; fused + shared prefix = {res['speedup_vs_unfused']:.2f}x")
        if "eval_tok_s" in res:
            print(f"  greedy evaluation, {args.eval_prompts} problems x 1: {res['eval_tok_s']:8.1f} real tok/s "
                  f"({res['eval_tok_s'] / res['sampler_tok_s']:.2f}x the sampling rate)")
            print(f"  tokens through the model (prompt tokens prefilled + generated): sampling "
                  f"{res['sampler_processed_tok_s']:.1f} tok/s, greedy evaluation {res['eval_processed_tok_s']:.1f} "
                  f"tok/s ({res['eval_processed_tok_s'] / res['sampler_processed_tok_s']:.2f}x; evaluation prefills "
                  f"one prompt per completion, sampling one per {args.k})")
        if "transformers_cb_tok_s" in res:
            res["speedup_vs_cb"] = res["sampler_tok_s"] / res["transformers_cb_tok_s"]
            print(f"  transformers continuous batching (generate_batch, {sampler_dtype}): "
                  f"{res['transformers_cb_tok_s']:8.1f} real tok/s; sampler / CB = {res['speedup_vs_cb']:.2f}x")
        elif "transformers_cb_error" in res:
            print(f"  transformers continuous batching failed: {res['transformers_cb_error']}")
        if "stock_b16_tok_s" in res:
            res["speedup_vs_b16"] = res["sampler_tok_s"] / res["stock_b16_tok_s"]
            print(f"  speed-up vs stock batch 16 (decode loops): {res['speedup_vs_b16']:.2f}x")
        if "job_tok_s" in res:
            line = f"  whole job `cotshape sample` (load included): {res['job_tok_s']:8.1f} real tok/s ({res['job_seconds']:.1f} s)"
            if "stock_b16_job_tok_s" in res:
                res["job_speedup_vs_b16_job"] = res["job_tok_s"] / res["stock_b16_job_tok_s"]
                line += (f"; stock batch 16 with its load {res['stock_b16_job_tok_s']:.1f} tok/s: "
                         f"{res['job_speedup_vs_b16_job']:.2f}x (goal >= 10x)")
            print(line)
        res["fraction_of_ceiling"] = res["sampler_tok_s"] / res["ceiling_tok_s"]
        print(f"  compute ceiling (prefill forward, {sampler_dtype}): {res['ceiling_tok_s']:.0f} tok/s; "
              f"sampler at {100 * res['fraction_of_ceiling']:.0f}% of it (goal >= 50 %)")
        print("  sampler steps by rows in the batch (rows finish at different lengths, so the batch decays):")
        for b in res["rows_bins"]:
            print(f"    >= {b['min_rows']:3d} rows: {b['tok_s']:7.1f} tok/s = {100 * b['tok_s'] / res['ceiling_tok_s']:3.0f} % "
                  f"of the ceiling ({b['steps']} steps, {100 * b['share_of_time']:.0f} % of the time)")
        try:
            import llama_cpp  # noqa: F401

            print("  llama.cpp: llama-cpp-python is importable but not benchmarked here")
        except ImportError:
            print("  llama.cpp: not measured (`pip download llama-cpp-python --only-binary=:all:` finds no wheel "
                  "for this platform; it builds from source only)")

    if args.check_accuracy:
        greedy = SamplingParams(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens)
        probs = problems[: args.check_accuracy]
        msgs = [task.chat_messages(p) for p in probs]
        for dt_name in ("float32", "bfloat16"):
            b = get_backend("transformers", cache, device="cpu", dtype=dt_name, batch_size=args.batch_size)
            outs = b.generate(msgs, greedy)
            verdicts = [task.verify(p, o[0].text) for p, o in zip(probs, outs, strict=True)]
            acc = sum(v.correct for v in verdicts) / len(verdicts)
            parsed = sum(v.parsed for v in verdicts) / len(verdicts)
            res[f"greedy_acc_{dt_name}"] = acc
            res[f"greedy_parsed_{dt_name}"] = parsed
            print(f"  greedy {dt_name}: accuracy {acc:.3f}, parsed {parsed:.3f} on {len(probs)} problems")
        # binomial standard error of the difference, as the noise yardstick
        p = (res["greedy_acc_float32"] + res["greedy_acc_bfloat16"]) / 2
        se = (2 * p * (1 - p) / len(probs)) ** 0.5
        print(f"  |fp32 - bf16| = {abs(res['greedy_acc_float32'] - res['greedy_acc_bfloat16']):.3f} (noise ~ {se:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
