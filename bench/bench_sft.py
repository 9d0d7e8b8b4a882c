"""SFT throughput: cotshape's ``train_sft`` settings against stock TRL ``SFTTrainer``.

Same data (GSM8K-style problems with worked solutions from reasoning-gym's ``gsm_symbolic``,
offline; about 170 tokens per example with the chat template), same student (SmolLM2-135M-Instruct),
batch 8, N optimizer steps each, in one process:

* ``stock``: ``SFTTrainer`` with TRL's defaults except ``bf16=False`` (fp32), i.e. gradient
  checkpointing on (TRL's default) and the default padded collation;
* ``cotshape-full``: :func:`cotshape.sft.train.train_sft`, method=full, dtype=auto, padding-free;
* ``cotshape-lora``: the same with method=lora.

Tokens/s counts real tokens (prompt + completion, no padding). Prints each, the ratio to stock,
the fraction of the bf16 training ceiling, and the loss curves side by side (same data order:
the same seed, so the curves are comparable).

The training ceiling is measured in the same run: the tokens/s of one [16, 128] bf16 forward
(pure matmul work, as in bench_sampling.py) divided by 3, since a training step does a forward
and a backward of about twice its work (issue 14: about 470 tokens/s for 135M on 2 cores). It is
measured before the runs (glibc's default allocator) and after them (with the allocator setting
``train_sft`` makes), and the higher one is the ceiling.

    .venv/bin/python bench/bench_sft.py --steps 8 [--model DIR] [--examples 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_records(n: int, seed: int = 0) -> list[dict]:
    import reasoning_gym

    ds = reasoning_gym.create_dataset("gsm_symbolic", size=n, seed=seed)
    return [
        {"id": f"bench-{i}", "problem_id": f"bench-{i}", "task": "gsm8k", "set": "H",
         "prompt": [{"role": "user", "content": x["question"]}],
         "completion": x["metadata"]["answer_cot"]}
        for i, x in enumerate(ds)
    ]


def resolve_model(arg: str | None, work: Path) -> str:
    """A local HF folder of SmolLM2-135M-Instruct: --model, cotshape.core.models.materialize, or the
    shipped GGUF dequantised and saved (the same thing materialize does)."""
    if arg:
        return arg
    dest = work / "smollm2-135m-instruct"
    try:
        from cotshape.core.models import materialize  # a teammate's; may not exist yet

        return str(materialize("smollm2-135m-instruct", dest))
    except ImportError:
        pass
    from transformers import AutoModelForCausalLM

    from cotshape.core.models import load_gguf_tokenizer, smollm2_gguf_path

    gguf = smollm2_gguf_path()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(dest)
    load_gguf_tokenizer().save_pretrained(dest)
    return str(dest)


def run_stock(model_path: str, records: list[dict], steps: int, batch: int, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from cotshape.sft.train import loss_recorder

    data = Dataset.from_list([
        {"prompt": r["prompt"], "completion": [{"role": "assistant", "content": r["completion"]}]}
        for r in records
    ])
    config = SFTConfig(output_dir=str(out), bf16=False, per_device_train_batch_size=batch, max_steps=steps,
                       learning_rate=1e-5, logging_steps=1, save_strategy="no", report_to="none", seed=0,
                       warmup_steps=0.1)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    rec = loss_recorder()
    trainer = SFTTrainer(model=model, args=config, train_dataset=data,
                         processing_class=AutoTokenizer.from_pretrained(model_path), callbacks=[rec])
    start = time.perf_counter()
    trainer.train()
    elapsed = time.perf_counter() - start
    tokens = trainer._total_train_tokens
    return {"tokens_per_second": tokens / elapsed, "train_tokens": tokens,
            "losses": [e["loss"] for e in rec.entries], "time": elapsed}


def run_cotshape(model_path: str, records: list[dict], steps: int, batch: int, out: Path, method: str) -> dict:
    import json

    from cotshape.core.artifacts import TRAIN_LOG
    from cotshape.sft.params import SFTParams
    from cotshape.sft.train import train_sft

    lr = 1e-5 if method == "full" else 2e-4
    params = SFTParams(method=method, batch_size=batch, max_steps=steps, learning_rate=lr, seed=0)
    metrics = train_sft(model_path, records, out, params)
    log = json.loads((out / TRAIN_LOG).read_text())
    return {**metrics, "losses": [e["loss"] for e in log["log"]], "time": log["train_time_s"]}


def training_ceiling(model_path: str) -> float:
    """bf16 forward tokens/s of a [16, 128] batch, divided by 3 (forward + backward)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16).eval()
    ids = torch.randint(100, 20000, (16, 128))
    with torch.inference_mode():
        model(input_ids=ids[:2, :32])  # warm-up
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            model(input_ids=ids, logits_to_keep=1)
            best = max(best, ids.numel() / (time.perf_counter() - t0))
    return best / 3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="local HF folder (default: SmolLM2-135M-Instruct, offline)")
    ap.add_argument("--examples", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=["stock", "cotshape-full", "cotshape-lora"])
    args = ap.parse_args()

    from transformers import AutoTokenizer

    from cotshape.sft.tokenize import tokenize_records

    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        work = Path(tmp)
        model_path = resolve_model(args.model, work)
        records = make_records(args.examples)
        lengths = [len(e["input_ids"]) for e in tokenize_records(AutoTokenizer.from_pretrained(model_path), records, None)]
        print(f"data: {len(records)} examples, tokens/example mean {sum(lengths) / len(lengths):.0f} "
              f"(min {min(lengths)}, max {max(lengths)}); batch {args.batch}, {args.steps} steps each")
        # the ceiling twice: with glibc's default allocator (before any run) and with the setting
        # train_sft makes (cotshape.sft.cpu_kernels.reuse_freed_memory, after the runs); the higher counts
        ceilings = {"default allocator": training_ceiling(model_path)}
        results = {}
        for name in args.only:
            if name == "stock":
                results[name] = run_stock(model_path, records, args.steps, args.batch, work / name)
            else:
                results[name] = run_cotshape(model_path, records, args.steps, args.batch, work / name,
                                             name.split("-", 1)[1])
            r = results[name]
            print(f"{name:>14}: {r['tokens_per_second']:7.1f} tokens/s ({r['train_tokens']} tokens in {r['time']:.1f} s)")

        from cotshape.sft.cpu_kernels import reuse_freed_memory

        reuse_freed_memory()
        ceilings["freed memory reused"] = training_ceiling(model_path)
    ceiling = max(ceilings.values())
    print(f"\nbf16 training ceiling (forward [16, 128] tokens/s / 3): {ceiling:.0f} tokens/s, the higher of "
          + ", ".join(f"{v:.0f} ({k})" for k, v in ceilings.items()))
    goals = {"cotshape-lora": 0.80, "cotshape-full": 0.65}
    for name, r in results.items():
        goal = f" (goal >= {100 * goals[name]:.0f} %)" if name in goals else ""
        print(f"{name:>14}: {100 * r['tokens_per_second'] / ceiling:5.1f} % of the ceiling{goal}")
    base = results.get("stock")
    if base:
        for name, r in results.items():
            if name != "stock":
                print(f"{name:>14}: {r['tokens_per_second'] / base['tokens_per_second']:.2f}x stock")
    names = list(results)
    print("\nloss per step\n" + "step " + " ".join(f"{n:>14}" for n in names))
    for i in range(max(len(r["losses"]) for r in results.values())):
        cells = [f"{r['losses'][i]:14.4f}" if i < len(r["losses"]) else " " * 14 for r in results.values()]
        print(f"{i + 1:4d} " + " ".join(cells))


if __name__ == "__main__":
    main()
