"""Distributional closeness of a training set to a model: the model's mean per-token loss (and
perplexity) on the set's completions.

This is the paper's evidence that model-written CoTs (G, W, P) sit closer to the student's own
distribution than human solutions (H): the untrained student's loss on them is lower. The loss is
measured exactly as SFT measures it: the same tokenization (chat template, or the plain-text
prompt with ``base.prompt_format: plain``) and completion mask
(:func:`cotshape.sft.tokenize.tokenize_records`), the same ``max_length`` cut, and TRL's fused LM head
for the per-token log-probabilities, so ``mean_loss`` equals SFT's first-step loss on the same
batch (a test checks it). Batched (sorted by length to limit padding), no gradients.
"""

from __future__ import annotations

import math
import os
from typing import Any


def load_scorer(model_path_or_model, device: str, dtype: str, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotshape.sft.checkpoints import MARKER, load_trained
    from cotshape.sft.config import training_dtype

    if isinstance(model_path_or_model, (str, os.PathLike)):
        path = str(model_path_or_model)
        if os.path.exists(os.path.join(path, MARKER)):  # a train_sft output (maybe a LoRA adapter)
            model = load_trained(path, device=device, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, training_dtype(dtype)))
        tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
    else:
        model = model_path_or_model
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(model.name_or_path)
    return model.to(device).eval(), tokenizer


def completion_loss(model_path_or_model, records: list[dict[str, Any]], batch_size: int = 8,
                    max_length: int | None = 512, device: str = "cpu", dtype: str = "float32",
                    tokenizer=None, per_example: bool = False, prompt_format: str = "chat", task=None,
                    problems: dict[str, Any] | None = None) -> dict[str, Any]:
    """Mean negative log-likelihood per completion token of ``records`` (training-set records:
    ``prompt`` messages + ``completion`` text) under the model, over all tokens of the set.

    ``prompt_format``, ``task`` and ``problems`` as in :func:`cotshape.sft.train.train_sft`: with
    ``plain`` the completion is scored after the task's plain-text prompt, as SFT trains it.

    Returns ``mean_loss``, ``perplexity`` (``exp(mean_loss)``), ``n_tokens`` (completion tokens
    scored) and ``n_examples`` (records kept after the ``max_length`` cut). With ``per_example``
    also ``example_nll`` and ``example_tokens``: each kept example's summed loss and token count,
    for bootstrap intervals (:func:`loss_intervals`). An empty set is an error: there is nothing
    to measure.
    """
    import torch
    from tqdm.auto import tqdm
    from trl.trainer.utils import add_fused_lm_head

    from cotshape.sft.cpu_kernels import use_cpu_label_head
    from cotshape.sft.tokenize import record_prompts, tokenize_records

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"closeness.batch_size: got {batch_size!r}, expected an integer >= 1")
    if not records:
        raise ValueError("completion_loss: the set is empty (0 records); nothing to measure")
    from cotshape.core.models import resolve_device

    device = resolve_device(device)  # "auto" -> cuda or cpu
    if device == "cpu":  # every batch frees and reallocates (positions x vocabulary) log-probabilities
        from cotshape.core.allocator import reuse_freed_memory

        reuse_freed_memory()
    model, tokenizer = load_scorer(model_path_or_model, device, dtype, tokenizer)
    examples = tokenize_records(tokenizer, records, max_length,
                                record_prompts(tokenizer, records, prompt_format, task, problems))
    if not examples:
        raise ValueError(f"completion_loss: every record loses its completion at max_length={max_length}")
    if not getattr(model, "_cotshape_fused_lm_head", False):
        # the log-probabilities SFTTrainer computes, without materialising (batch, len, vocab) logits,
        # with train_sft's CPU head (labelled positions only) where TRL's kernel would run as tiles
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        add_fused_lm_head(base)
        use_cpu_label_head(base)
        model._cotshape_fused_lm_head = True
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    total_nll, total_tokens = 0.0, 0
    ex_nll, ex_tok = [0.0] * len(examples), [0] * len(examples)
    bar = tqdm(total=sum(sum(e["completion_mask"]) for e in examples), unit="tok", desc="completion loss")
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = [examples[i] for i in order[start:start + batch_size]]
            width = max(len(e["input_ids"]) for e in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attn = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100, dtype=torch.long)
            for row, e in enumerate(batch):
                n = len(e["input_ids"])
                ids[row, :n] = torch.tensor(e["input_ids"])
                attn[row, :n] = 1
                labels[row, :n] = torch.tensor([t if m else -100 for t, m in zip(e["input_ids"], e["completion_mask"], strict=True)])
            out = model(input_ids=ids.to(device), attention_mask=attn.to(device), labels=labels.to(device),
                        fused_lm_head=True, use_cache=False)
            total_nll += float(-out.log_probs.double().sum())
            n_tok = int(out.label_mask.sum())
            if per_example:  # log_probs is (batch, len) and zero where the label is ignored
                row_nll, row_tok = -out.log_probs.double().sum(dim=-1), out.label_mask.sum(dim=-1)
                for r, i in enumerate(order[start:start + batch_size]):
                    ex_nll[i], ex_tok[i] = float(row_nll[r]), int(row_tok[r])
            total_tokens += n_tok
            bar.update(n_tok)
    bar.close()
    mean = total_nll / total_tokens
    result: dict[str, Any] = {"mean_loss": mean, "perplexity": math.exp(mean), "n_tokens": total_tokens,
                              "n_examples": len(examples)}
    if per_example:
        result["example_nll"], result["example_tokens"] = ex_nll, ex_tok
    return result


def loss_intervals(results: dict[str, dict[str, Any]], reference: str = "H", seed: int = 0,
                   n_boot: int = 10000) -> dict[str, dict[str, Any]]:
    """Bootstrap intervals for the closeness of every set.

    ``results`` maps a set name to :func:`completion_loss` output made with ``per_example=True``.
    Returns, per set, the summary without the per-example arrays plus ``ci95`` (the 95 %
    interval of ``mean_loss``, resampling examples) and, for every set but ``reference``,
    ``minus_ref`` = reference loss - this set's loss (> 0: the set sits closer to the model than
    the reference) with its interval ``minus_ref_ci95`` (the two sets resampled independently).
    """
    from cotshape.core.bootstrap import ratio_diff_ci, ratio_mean_ci

    out: dict[str, dict[str, Any]] = {}
    ref = results.get(reference)
    for name, r in results.items():
        summary = {k: v for k, v in r.items() if k not in ("example_nll", "example_tokens")}
        if "example_nll" in r:
            summary["ci95"] = ratio_mean_ci(r["example_nll"], r["example_tokens"], n_boot=n_boot, seed=seed)["ci95"]
            if ref is not None and name != reference and "example_nll" in ref:
                d = ratio_diff_ci(ref["example_nll"], ref["example_tokens"], r["example_nll"], r["example_tokens"],
                                  n_boot=n_boot, seed=seed)
                summary["minus_ref"], summary["minus_ref_ci95"] = d["diff"], d["ci95"]
        out[name] = summary
    return out
