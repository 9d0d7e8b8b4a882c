"""The prepared GPU check: cotshape's generation, SFT and evaluation on one GPU, in minutes.

Runs on a machine with only PyTorch, transformers and accelerate (no network, no vLLM; TRL and
datasets optional) plus this repository:

1. **generation**: the cotshape ``transformers`` backend, bf16, many chat prompts x ``k``
   sampled completions; real generated tokens per second;
2. **SFT**: a few optimizer steps of full fine-tuning with bf16 autocast through
   :func:`cotshape.sft.train.train_sft` (stock TRL ``SFTTrainer``); if TRL/datasets are not
   importable, the same tokenized examples and completion-only loss in a plain PyTorch loop
   (labelled ``torch-loop``). Tokens/s counts real tokens (no padding); model FLOPs
   utilisation = 6 x parameters x tokens/s / peak bf16 FLOP/s (``--peak-tflops``, default
   989 = H100 SXM dense; H200 is the same chip);
3. **evaluation**: greedy answers to a fixed set of GSM8K-style and Countdown problems
   (bench/data/gpu_check_test.jsonl, generated offline with reasoning-gym) graded by
   ``cotshape.tasks`` verifiers; accuracy as correct/total and correct/parsed.

The model: ``--model DIR`` (a Hugging Face folder, e.g. the materialised SmolLM2-135M-Instruct).
Without it, the SmolLM2-135M-Instruct architecture and tokenizer from
bench/data/smollm2-135m-skeleton/ with RANDOM weights: the real weights (517 MB) do not fit a
64 MiB transfer to a GPU box. Speeds are those of the real model (same shapes, same kernels;
random weights rarely emit EOS, so every row decodes to max_new_tokens); accuracy is then
meaningless and the table says so.

    python bench/gpu_check.py                       # GPU, about 2-4 minutes on an H100
    python bench/gpu_check.py --device cpu --tiny   # smoke test: tiny model, seconds

Prints a short table last and writes it to ``--out``/gpu_check.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
SKELETON = DATA / "smollm2-135m-skeleton"
sys.path.insert(0, str(ROOT))  # the repo, installed or not


def versions() -> tuple[dict[str, str], list[str]]:
    """Versions of what the check uses, and the optional packages that are missing."""
    found, missing = {}, []
    for name in ("torch", "transformers", "accelerate", "trl", "datasets", "peft", "reasoning_gym"):
        try:
            found[name] = getattr(importlib.import_module(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - a broken optional install is "missing" too
            missing.append(f"{name} ({type(e).__name__}: {str(e)[:80]})")
    # the generation backend uses transformers 5.20+ cache outputs (pyproject pins >= 5.20)
    major_minor = tuple(int(x) for x in found.get("transformers", "0.0").split(".")[:2] if x.isdigit())
    if major_minor < (5, 20):
        missing.append(f"transformers>=5.20 (have {found.get('transformers')}: carry a wheel, see gpu_check.sh)")
    return found, missing


def build_model(args, workdir: Path) -> tuple[str, str]:
    """The model folder to use and a note on its weights."""
    if args.model:
        if not (Path(args.model) / "config.json").exists():
            raise SystemExit(f"--model {args.model}: not a Hugging Face model folder (no config.json)")
        return args.model, "real weights"
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(SKELETON)
    if args.tiny:
        # same tokenizer and architecture family, toy sizes: the CPU smoke test
        config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = workdir / "model"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(SKELETON).save_pretrained(out)
    model.generation_config.save_pretrained(out)
    for name in ("generation_config.json", "chat_template.jinja"):
        if (SKELETON / name).exists() and not (out / name).exists():
            (out / name).write_bytes((SKELETON / name).read_bytes())
    kind = "tiny" if args.tiny else "SmolLM2-135M shape"
    return str(out), f"RANDOM weights ({kind}): speeds valid, accuracy meaningless"


def read_problems(name: str) -> list[dict]:
    from cotshape.core.records import read_jsonl

    return read_jsonl(DATA / name)


def get_tasks() -> dict:
    """gsm8k and countdown Task objects (imported directly: the registry's other tasks may need
    packages this machine lacks)."""
    from cotshape.tasks.countdown import Countdown
    from cotshape.tasks.gsm8k import GSM8K

    return {"gsm8k": GSM8K(), "countdown": Countdown()}


def count_params(model_dir: str) -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    return sum(p.numel() for p in model.parameters())


# ---- 1. generation ---------------------------------------------------------------------
def check_generation(args, model_dir: str, dtype: str) -> dict:
    from cotshape.generation import SamplingParams, get_backend

    tasks = get_tasks()
    problems = read_problems("gpu_check_test.jsonl") + read_problems("gpu_check_train.jsonl")
    prompts = [tasks[p["task"]].chat_messages(p) for p in problems]
    prompts = (prompts * (args.prompts // len(prompts) + 1))[: args.prompts]
    backend = get_backend("transformers", model_dir, device=args.device, dtype=dtype, batch_size=args.gen_batch)
    params = SamplingParams(n=args.k, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    # warm-up: CUDA context, kernels, allocator
    backend.generate(prompts[:2], SamplingParams(n=1, temperature=0.8, max_new_tokens=8, seed=1))
    _sync(args.device)
    start = time.perf_counter()
    out = backend.generate(prompts, params)
    _sync(args.device)
    elapsed = time.perf_counter() - start
    tokens = sum(c.num_tokens for row in out for c in row)
    close = getattr(backend, "close", None)
    if close:
        close()
    return {"prompts": len(prompts), "k": args.k, "sequences": len(prompts) * args.k, "tokens": tokens,
            "seconds": elapsed, "tokens_per_s": tokens / elapsed, "batch_size": args.gen_batch,
            "max_new_tokens": args.max_new_tokens}


# ---- 2. SFT ----------------------------------------------------------------------------
def sft_records() -> list[dict]:
    tasks = get_tasks()
    return [{"prompt": tasks[p["task"]].chat_messages(p), "completion": tasks[p["task"]].human_completion(p)}
            for p in read_problems("gpu_check_train.jsonl")]


def check_sft(args, model_dir: str, workdir: Path, n_params: int) -> dict:
    from cotshape.sft.params import SFTParams

    records = sft_records()
    records = (records * (args.sft_steps * args.sft_batch // len(records) + 1))
    params = SFTParams(method="full", epochs=1.0, max_steps=args.sft_steps, batch_size=args.sft_batch,
                       learning_rate=1e-5, warmup_ratio=0.0, max_length=512, logging_steps=1,
                       dtype="bfloat16" if args.device == "cuda" else "float32",
                       padding_free=False, gradient_checkpointing=False, seed=0)
    engine = args.sft_engine
    if engine == "auto":
        try:
            importlib.import_module("trl")
            importlib.import_module("datasets")
            engine = "trl"
        except Exception:  # noqa: BLE001 - missing or broken: either way, the fallback
            engine = "torch-loop"
    if engine == "trl":
        from cotshape.sft.train import train_sft

        m = train_sft(model_dir, records, workdir / "sft-out", params)
        res = {"steps": m["steps"], "tokens": m["train_tokens"], "tokens_per_s": m["tokens_per_second"],
               "first_loss": m["first_loss"], "final_loss": m["final_loss"]}
    else:
        res = torch_loop_sft(args, model_dir, records, params)
    res["engine"] = engine
    res["dtype"] = params.dtype if engine == "trl" else ("bf16 autocast" if args.device == "cuda" else "float32")
    res["batch_size"] = args.sft_batch
    res["mfu"] = 6 * n_params * res["tokens_per_s"] / (args.peak_tflops * 1e12) if args.device == "cuda" else None
    return res


def torch_loop_sft(args, model_dir: str, records: list[dict], params) -> dict:
    """Fallback without TRL: the same examples (cotshape.sft.tokenize.tokenize_records), completion-only
    loss, AdamW, bf16 autocast over fp32 weights, padded batches; timing excludes step 1."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotshape.sft.tokenize import tokenize_records

    tok = AutoTokenizer.from_pretrained(model_dir)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    examples = tokenize_records(tok, records, params.max_length)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(args.device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)
    use_bf16 = args.device == "cuda"
    losses, tokens, elapsed = [], 0, 0.0
    for step in range(params.max_steps):
        batch = examples[(step * params.batch_size) % len(examples):][: params.batch_size]
        width = max(len(e["input_ids"]) for e in batch)
        ids = torch.full((len(batch), width), pad)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, e in enumerate(batch):
            n = len(e["input_ids"])
            ids[i, :n] = torch.tensor(e["input_ids"])
            mask[i, :n] = 1
            keep = torch.tensor(e["completion_mask"]).bool()
            labels[i, :n] = torch.where(keep, torch.tensor(e["input_ids"]), torch.tensor(-100))
        ids, labels, mask = ids.to(args.device), labels.to(args.device), mask.to(args.device)
        _sync(args.device)
        t0 = time.perf_counter()
        with torch.autocast(args.device, dtype=torch.bfloat16, enabled=use_bf16):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        _sync(args.device)
        if step > 0:  # step 1 pays for kernel selection and allocator growth
            elapsed += time.perf_counter() - t0
            tokens += int(mask.sum())
        losses.append(float(loss))
    return {"steps": params.max_steps, "tokens": tokens, "tokens_per_s": tokens / elapsed if elapsed else 0.0,
            "first_loss": losses[0], "final_loss": losses[-1]}


# ---- 3. evaluation ---------------------------------------------------------------------
def check_eval(args, model_dir: str, dtype: str) -> dict:
    from cotshape.generation import SamplingParams, get_backend

    tasks = get_tasks()
    problems = read_problems("gpu_check_test.jsonl")[: args.eval_problems]
    backend = get_backend("transformers", model_dir, device=args.device, dtype=dtype, batch_size=args.gen_batch)
    start = time.perf_counter()
    out = backend.generate([tasks[p["task"]].chat_messages(p) for p in problems],
                           SamplingParams(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens))
    elapsed = time.perf_counter() - start
    verdicts = [tasks[p["task"]].verify(p, row[0].text) for p, row in zip(problems, out, strict=True)]
    correct = sum(v.correct for v in verdicts)
    parsed = sum(v.parsed for v in verdicts)
    return {"problems": len(problems), "correct": correct, "parsed": parsed,
            "accuracy": correct / len(problems), "accuracy_parsed": correct / parsed if parsed else None,
            "seconds": elapsed}


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def run_step(name: str, fn, results: dict, failures: list[str]) -> None:
    print(f"\n== {name} ==", flush=True)
    try:
        results[name] = fn()
        print(json.dumps(results[name], indent=1, default=str), flush=True)
    except Exception as e:  # noqa: BLE001 - report and go on: the other checks still tell something
        traceback.print_exc()
        results[name] = {"error": f"{type(e).__name__}: {e}"}
        failures.append(name)


def table(results: dict, env: dict, args) -> str:
    def f(x, spec=".0f"):
        return "-" if x is None else format(x, spec)

    g, s, e = results.get("generation", {}), results.get("sft", {}), results.get("evaluate", {})
    rows = [("device", env["device"]), ("model", env["model_note"]),
            ("versions", ", ".join(f"{k} {v}" for k, v in env["versions"].items()))]
    if env["missing"]:
        rows.append(("missing (optional)", "; ".join(env["missing"])))
    if "error" in g:
        rows.append(("generation", "FAILED: " + g["error"]))
    elif g:
        rows.append(("generation", f"{f(g['tokens_per_s'])} tok/s  ({g['sequences']} seqs = {g['prompts']} prompts x k={g['k']}, "
                                   f"batch {g['batch_size']}, {g['tokens']} tokens in {g['seconds']:.1f} s)"))
    if "error" in s:
        rows.append(("sft", "FAILED: " + s["error"]))
    elif s:
        mfu = f"MFU {100 * s['mfu']:.1f}% of {args.peak_tflops:g} TFLOP/s bf16 (6*N*tok/s, N={env['params'] / 1e6:.1f}M)" \
            if s.get("mfu") is not None else "MFU n/a on CPU"
        rows.append(("sft", f"{f(s['tokens_per_s'])} tok/s  [{s['engine']}, {s['dtype']}, batch {s['batch_size']}, "
                            f"{s['steps']} steps, loss {s['first_loss']:.3f} -> {s['final_loss']:.3f}]  {mfu}"))
    if "error" in e:
        rows.append(("evaluate", "FAILED: " + e["error"]))
    elif e:
        acc_p = "-" if e["accuracy_parsed"] is None else f"{100 * e['accuracy_parsed']:.1f}%"
        rows.append(("evaluate", f"greedy {e['correct']}/{e['problems']} = {100 * e['accuracy']:.1f}% "
                                 f"(correct/parsed {e['correct']}/{e['parsed']} = {acc_p}) in {e['seconds']:.1f} s"))
    w = max(len(k) for k, _ in rows)
    line = "-" * (w + 60)
    return "\n".join([line, "cotshape GPU check", line, *(f"{k:<{w}}  {v}" for k, v in rows), line])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--tiny", action="store_true", help="toy model and sizes (CPU smoke test)")
    p.add_argument("--model", default=None, help="HF model folder (default: SmolLM2-135M shape, random weights)")
    p.add_argument("--out", default=None, help="folder for gpu_check.json (default: a temp folder)")
    p.add_argument("--prompts", type=int, default=None, help="generation prompts (default 512; tiny 4)")
    p.add_argument("--k", type=int, default=4, help="samples per prompt")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default 256; tiny 8")
    p.add_argument("--gen-batch", type=int, default=None, help="rows decoded together (default 256; tiny 8)")
    p.add_argument("--sft-steps", type=int, default=None, help="optimizer steps (default 30; tiny 2)")
    p.add_argument("--sft-batch", type=int, default=None, help="examples per step (default 32; tiny 2)")
    p.add_argument("--eval-problems", type=int, default=None, help="default 32 (all); tiny 4")
    p.add_argument("--sft-engine", default="auto", choices=("auto", "trl", "torch-loop"),
                   help="auto: cotshape.sft.train.train_sft (TRL) when trl and datasets import, else a plain torch loop")
    p.add_argument("--peak-tflops", type=float, default=989.0,
                   help="peak dense bf16 TFLOP/s for MFU (H100/H200 SXM: 989; H100 PCIe: 756)")
    args = p.parse_args(argv)
    big = not args.tiny
    for name, full, tiny in (("prompts", 512, 4), ("max_new_tokens", 256, 8), ("gen_batch", 256, 8),
                             ("sft_steps", 30, 2), ("sft_batch", 32, 2), ("eval_problems", 32, 4)):
        if getattr(args, name) is None:
            setattr(args, name, full if big else tiny)

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no GPU (use --device cpu --tiny for the smoke test)", file=sys.stderr)
        return 2
    found, missing = versions()
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    with tempfile.TemporaryDirectory(prefix="cotshape-gpu-check-") as tmp:
        workdir = Path(tmp)
        model_dir, note = build_model(args, workdir)
        n_params = count_params(model_dir)
        env = {"device": device_name, "model_note": note, "versions": found, "missing": missing, "params": n_params}
        print(f"device {device_name}; model {model_dir} ({note}); {n_params / 1e6:.1f}M params")
        if missing:
            print("optional packages missing: " + "; ".join(missing))
        results: dict = {}
        failures: list[str] = []
        run_step("generation", lambda: check_generation(args, model_dir, dtype), results, failures)
        run_step("sft", lambda: check_sft(args, model_dir, workdir, n_params), results, failures)
        run_step("evaluate", lambda: check_eval(args, model_dir, dtype), results, failures)
    out_dir = Path(args.out) if args.out else Path(tempfile.gettempdir())
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps({"env": env, "results": results}, indent=2, default=str) + "\n")
    print()
    print(table(results, env, args))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
