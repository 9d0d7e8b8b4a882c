"""Supervised fine-tuning of the student on one training set (H, G, W, P, a mixture, ...).

The paper's SFT: prompt/completion pairs, loss on the completion tokens only; the prompt is the
student's chat template (``base.prompt_format: chat``) or, as the authors trained base students,
the task's plain-text template (``plain``: :func:`record_prompts`, the same text evaluation
decodes from). We use TRL's ``SFTTrainer`` (no hand-written loop) with an ``SFTConfig`` built
deliberately from the ``sft:`` params section:

* dtype: TRL defaults to ``bf16=True``; we resolve ``auto`` to bf16 autocast only where bf16 is
  fast (CUDA with bf16, or a CPU with AVX512-BF16/AMX), fp32 elsewhere. With ``precision: amp``
  master weights stay fp32; ``precision: bf16`` trains the bf16 weights themselves, as the
  authors' sft.py did (on SmolLM2-135M, a step of 1e-6 changes only 0.4% of the bf16 weights).
* intermediate checkpoints (``save_steps``) go to ``<out>/checkpoints/step-N`` in the same
  loadable layout as ``<out>`` (:mod:`cotshape.sft.checkpoints`).
* gradient checkpointing: TRL defaults to on; we set it from params (off by default: the small
  default student fits easily and checkpointing costs ~30% compute).
* padding-free batches: the examples of a batch are concatenated into one row with per-example
  position ids (TRL's collator), so no padding is computed. Flash attention has varlen kernels for
  this; plain sdpa would build a dense block-diagonal mask over the whole row (correct, but ~5x the
  attention cost on CPU), so sdpa models train with :data:`VARLEN_SDPA`, one causal attention per
  example (on CPU, two batched products and an fp32 softmax up to :data:`VARLEN_MATH_MAX` tokens,
  ~2x sdpa's CPU kernel forward + backward). Tests check both give the padded loss on a fixed batch
  (no token attends across examples).

* the loss head on CPU: TRL's fused LM-head kernel runs as fp32 Python tiles over every position
  off CUDA; :func:`use_cpu_label_head` projects only the labelled positions, in bf16 autocast
  (about 1.8x a whole full fine-tuning step on 2 cores), with one pass of ``exp`` over the
  vocabulary for log-probs and entropy. A test checks it gives TRL's outputs and gradients.
* CPU speed without changing a bit: LoRA under bf16 autocast keeps the frozen base weights in bf16
  (:func:`store_frozen_linears_in`) and hands adapters their input uncast
  (:func:`skip_lora_input_casts`); glibc keeps freed memory for reuse (:func:`reuse_freed_memory`).
  ``python bench/bench_sft.py`` measures each method against stock TRL and the bf16 ceiling.

Records are tokenized in :mod:`cotshape.sft.tokenize` (the way TRL tokenizes a conversational
prompt/completion example; a test checks it is identical to TRL's own preparation), because the
padding-free collator cannot enforce ``max_length`` itself and because closeness.py must use the
very same masks. The CPU kernels are in :mod:`cotshape.sft.cpu_kernels`, the ``SFTConfig`` in
:mod:`cotshape.sft.config`; the output folder is written atomically by
:mod:`cotshape.sft.checkpoints`, whose :func:`~cotshape.sft.checkpoints.load_trained` is what the
evaluate stage loads (LoRA adapters are merged on load). This module keeps :func:`train_sft` and
how a stage launches it (:func:`launch_command`, :func:`check_launcher`).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from cotshape.core.artifacts import CHECKPOINTS, STEP_PREFIX, TRAIN_LOG
from cotshape.core.errors import StageError
from cotshape.sft.checkpoints import checkpoint_saver, replace_dir, save_folder
from cotshape.sft.config import LORA_TARGET_MODULES, build_sft_config, training_dtype
from cotshape.sft.cpu_kernels import (
    VARLEN_SDPA,
    reuse_freed_memory,
    skip_lora_input_casts,
    store_frozen_linears_in,
    use_cpu_label_head,
    use_varlen_sdpa,
)
from cotshape.sft.params import SFTParams
from cotshape.sft.tokenize import record_prompts, tokenize_records

# --------------------------------------------------------------------------------------------
# launch


def launch_command(params: SFTParams, script_args: list[str],
                   accelerate_config_dir: str = "configs/accelerate") -> list[str]:
    """How a stage runs a training script: plain python, or ``accelerate launch`` with the
    launcher's config file (configs/accelerate/<launcher>.yaml)."""
    if params.launcher == "none":
        return [sys.executable, *script_args]
    return [
        "accelerate", "launch",
        "--config_file", f"{accelerate_config_dir}/{params.launcher}.yaml",
        "--num_processes", str(params.num_processes),
        "--num_machines", str(params.num_machines),
        *script_args,
    ]


def check_launcher(params: SFTParams, cuda: bool | None = None, deepspeed_installed: bool | None = None) -> None:
    """Refuse a launcher this machine cannot run, before anything heavy loads: one line naming
    ``sft.launcher``, why, and what to use instead (a :class:`~cotshape.core.errors.StageError`).

    ``fsdp`` needs CUDA: torch FSDP1, as configs/accelerate/fsdp.yaml sets it up
    (``sync_module_states`` for CPU-RAM-efficient loading), cannot initialise its parameters on
    CPU, and accelerate does not shard on CPU at all (tried with FSDP2 and CPU-RAM-efficient
    loading off: accelerate's state makes FSDP only for GPU-like devices, so its CPU processes
    run as MULTI_CPU, plain data parallel — which is what ``ddp`` already is). ``deepspeed`` needs the ``deepspeed`` package and CUDA (ZeRO-3 over NCCL). ``ddp`` runs
    anywhere (gloo on CPU). ``cuda`` and ``deepspeed_installed`` default to what this machine has."""
    if params.launcher not in ("fsdp", "deepspeed"):
        return
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if params.launcher == "fsdp":
        if not cuda:
            raise StageError("sft.launcher: fsdp needs CUDA (torch FSDP cannot initialise its parameters on "
                             "CPU: sync_module_states is not supported there); use sft.launcher: ddp on CPU")
        return
    if deepspeed_installed is None:
        import importlib.util

        deepspeed_installed = importlib.util.find_spec("deepspeed") is not None
    if not deepspeed_installed and not cuda:
        raise StageError("sft.launcher: deepspeed needs CUDA and the deepspeed package (not installed); "
                         "use sft.launcher: ddp on CPU")
    if not deepspeed_installed:
        raise StageError("sft.launcher: deepspeed needs the deepspeed package, which is not installed: "
                         "pip install 'cotshape[deepspeed]' (or use sft.launcher: ddp or fsdp)")
    if not cuda:
        raise StageError("sft.launcher: deepspeed needs CUDA (ZeRO-3 in configs/accelerate/deepspeed.yaml "
                         "runs on GPUs); use sft.launcher: ddp on CPU")


# --------------------------------------------------------------------------------------------
# training


def loss_recorder():
    """A TrainerCallback that keeps every training log entry (the benchmark uses it too)."""
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        """Keeps every training log entry (loss per step) for train_log.json."""

        def __init__(self) -> None:
            self.entries: list[dict[str, float]] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                entry = {"step": int(state.global_step)}
                for key in ("loss", "learning_rate", "grad_norm", "num_tokens", "epoch"):
                    if key in logs:
                        entry[key] = float(logs[key])
                self.entries.append(entry)

    return LossRecorder()


def sft_tokenizer(model_path: str | os.PathLike):
    """The tokenizer SFT trains with: ``model_path``'s, with EOS as its pad token if it has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def train_sft(model_path: str | os.PathLike, records: list[dict[str, Any]], out_dir: str | os.PathLike,
              params: SFTParams, seed: int | None = None, callbacks: Iterable = (),
              tracker=None, prompt_format: str = "chat", task=None,
              problems: dict[str, Any] | None = None, tokenizer=None) -> dict[str, Any]:
    """Fine-tune ``model_path`` on ``records`` (``prompt`` messages + ``completion`` text), loss
    on the completion only, and save the result to ``out_dir`` (replaced atomically).

    ``prompt_format`` (``base.prompt_format``): ``chat`` trains on the record's messages in the
    chat template; ``plain`` on the task's plain-text prompt of the record's problem (``task``
    and ``problems``, id -> problem, are then required; :func:`record_prompts`).

    ``tokenizer``: the one of ``model_path`` from :func:`sft_tokenizer`, when the caller trains
    several runs (the sft stage: one load for ``sft.runs`` runs; Gemma-3's 262k-token tokenizer
    takes ~3 s to load). TRL changes the tokenizer only where SFTConfig names a pad or EOS token
    (sft_config names neither, and sft_tokenizer has set the pad token), so a reused one equals a fresh load.

    ``tracker`` is an active run from :meth:`cotshape.tracking.tracker.Tracker.run` (or anything with a
    ``callback()`` returning a ``TrainerCallback``): the step-wise loss goes to it.

    The folder holds the tokenizer, ``train_log.json`` and ``cotshape_sft.json``, and either the
    full model (method=full) or the LoRA adapter (method=lora; :func:`load_trained` merges it
    onto the base model recorded in the marker). Returns ``train_loss`` (mean over the run),
    ``first_loss``, ``final_loss``, ``steps``, ``train_tokens`` (real tokens processed, prompts
    included, no padding), ``tokens_per_second`` and ``examples``.
    """
    import torch
    from accelerate import PartialState
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    if seed is not None:
        params = replace(params, seed=seed)
    if not records:
        raise ValueError("train_sft: the training set is empty (0 records); nothing to train on")
    out_dir = Path(out_dir)
    model_path = str(model_path)

    if tokenizer is None:
        tokenizer = sft_tokenizer(model_path)
    examples = tokenize_records(tokenizer, records, params.max_length,
                                record_prompts(tokenizer, records, prompt_format, task, problems))
    if not examples:
        raise ValueError(
            f"train_sft: all {len(records)} records lose their whole completion at "
            f"sft.max_length={params.max_length}; raise sft.max_length"
        )
    dataset = Dataset.from_list(examples)

    # A fixed, deterministic temp folder (not mkdtemp): under accelerate every process must agree
    # on where trainer.save_model writes.
    tmp_dir = out_dir.parent / f".{out_dir.name}.tmp"
    config = build_sft_config(params, tmp_dir / "trainer")
    # precision amp: fp32 weights, so under bf16 autocast the optimizer keeps fp32 master weights;
    # precision bf16: bf16 weights and optimizer states (an update below half a bf16 step is lost)
    model = AutoModelForCausalLM.from_pretrained(
        model_path, dtype=torch.bfloat16 if params.precision == "bf16" else torch.float32)
    restore_attn = use_varlen_sdpa(model) if params.padding_free else None

    peft_config = None
    if params.method == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
            target_modules=LORA_TARGET_MODULES, task_type="CAUSAL_LM", bias="none",
        )

    recorder = loss_recorder()
    cbs = [recorder, *callbacks]
    if tracker is not None:
        cbs.append(tracker.callback())
    main = PartialState().is_main_process
    if main and tmp_dir.exists():
        shutil.rmtree(tmp_dir)  # left by a killed run
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=cbs)
    use_cpu_label_head(model)  # TRL patched this same object (the base model under peft)
    # one process only: FSDP flattens parameters and wants one dtype per flat parameter
    if params.method == "lora" and config.bf16 and params.precision == "amp" and trainer.accelerator.num_processes == 1:
        store_frozen_linears_in(trainer.model, torch.bfloat16)  # what autocast multiplies with anyway
        skip_lora_input_casts(trainer.model)
    if not torch.cuda.is_available():
        reuse_freed_memory()
    main = trainer.is_world_process_zero()

    def save_checkpoint(folder: Path, step: int) -> None:  # sft.save_steps, inside the out folder
        marker = {"method": params.method, "base_model": model_path, "merged": params.method == "full", "step": step}
        save_folder(trainer, folder, tokenizer, marker, model, restore_attn, main)
        if restore_attn is not None:  # back to the padding-free kernel for the rest of the run
            model.set_attn_implementation(VARLEN_SDPA)

    saver = checkpoint_saver(params.save_steps, tmp_dir, save_checkpoint, main)
    trainer.add_callback(saver)

    start = time.perf_counter()
    result = trainer.train()
    train_time = time.perf_counter() - start
    # TRL counts the real (unpadded) tokens of every batch, across processes
    train_tokens = int(getattr(trainer, "_total_train_tokens", 0)) or sum(
        len(e["input_ids"]) for e in examples) * int(trainer.state.num_train_epochs)

    losses = [e["loss"] for e in recorder.entries]
    metrics = {
        "train_loss": float(result.training_loss),
        "first_loss": losses[0] if losses else float("nan"),
        "final_loss": losses[-1] if losses else float("nan"),
        "steps": int(trainer.state.global_step),
        "train_tokens": train_tokens,
        "tokens_per_second": train_tokens / train_time if train_time > 0 else 0.0,
        "examples": len(examples),
    }

    log = {
        **metrics,
        "train_time_s": train_time,
        "dtype": training_dtype(params.dtype),
        "precision": params.precision,
        "checkpoints": [f"{CHECKPOINTS}/{STEP_PREFIX}{n}" for n in saver.saved],
        "checkpoints_not_reached": saver.not_reached,
        "records": len(records),
        "dropped_by_max_length": len(records) - len(examples),
        # how the run was spread: NO (one process), MULTI_CPU / MULTI_GPU (ddp), FSDP, DEEPSPEED
        "distributed_type": str(trainer.accelerator.distributed_type).rsplit(".", 1)[-1],
        "num_processes": int(trainer.accelerator.num_processes),
        "params": asdict(params),
        "log": recorder.entries,
    }
    marker = {"method": params.method, "base_model": model_path, "merged": params.method == "full"}
    save_folder(trainer, tmp_dir, tokenizer, marker, model, restore_attn, main, card_name=out_dir.name,
                 files={TRAIN_LOG: json.dumps(log, indent=2) + "\n"})
    if main:
        replace_dir(tmp_dir, out_dir)
    trainer.accelerator.wait_for_everyone()
    return metrics
