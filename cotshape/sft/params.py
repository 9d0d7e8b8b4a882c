"""The ``sft:`` section of params.yaml: :class:`SFTParams`, pure data and validation.

Kept apart from :mod:`cotshape.sft.train` (which imports it) so that :mod:`cotshape.core.config`, and
with it every stage, does not depend on the trainer's code: a change to training reruns only
the stages that train. This module imports nothing from torch, transformers, trl or
:mod:`cotshape.sft.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from cotshape.core.fields import param as _f

_METHODS = ("lora", "full")
_DTYPES = ("auto", "float32", "bfloat16")
_LAUNCHERS = ("none", "ddp", "fsdp", "deepspeed")
_PRECISIONS = ("amp", "bf16")




@dataclass
class SFTParams:
    """The ``sft:`` section of params.yaml (plus ``seed``, taken from ``base.seed``)."""

    runs: int = _f(4, "training runs per set (the unit of replication of every accuracy claim): run R trains "
                   "with SFT seed base.sft_seed + R into <out>/run-R, all in one process; every run is evaluated "
                   "and a claim's interval is taken over the runs (1: no run-level interval, so no accuracy "
                   "claim can hold or be contradicted)", min=1, max=1000)
    runs_by_set: dict[str, int] = _f(None, "training runs of the named sets instead of sft.runs: more runs where a "
                                     "claim needs the power and fewer where it does not ({G: 6, H: 6, W: 3}: C2, G - H, "
                                     "has the smallest effect against the spread of runs; C3's W - H is about four "
                                     "times its interval; README: Power). A comparison pairs run R "
                                     "with run R, so it uses the runs both of its sets have (the fewer); {} trains "
                                     "every set sft.runs times", min=1, max=1000,
                                     default_factory=lambda: {"G": 6, "H": 6, "W": 3})
    method: str = _f("lora", "lora (peft adapters on attention + MLP projections) | full (all weights)")
    epochs: float = _f(2.0, "passes over the training set (fractions allowed)", max=10_000)
    learning_rate: float = _f(2e-4, "peak AdamW learning rate (linear decay after warmup)")
    batch_size: int = _f(8, "examples per device per micro-step", min=1, max=65_536)
    grad_accum: int | str = _f(1, "micro-steps accumulated per optimizer step, or auto: sft.effective_batch_size / "
                                  "(batch_size x num_processes), which must divide evenly")
    effective_batch_size: int | None = _f(None, "sequences per optimizer step over all processes and machines "
                                          "(batch_size x grad_accum x num_processes); null: not enforced. When set, "
                                          "a grad_accum that gives another number is refused; set it to null to change the recipe on purpose")
    precision: str = _f("amp", "amp (fp32 master weights, bf16 autocast where sft.dtype resolves to bfloat16) | bf16 "
                        "(the weights themselves in bf16, optimizer states too, as the authors' sft.py ran: "
                        "torch_dtype=bfloat16 with bf16=True; needs sft.dtype auto or bfloat16)",
                        choices=("amp", "bf16"))
    save_steps: list[int] = _f(None, "optimizer steps after which an intermediate checkpoint is saved to "
                               "<out>/checkpoints/step-<N> (loadable like the final model); a step the run "
                               "does not reach gets a folder with only SKIPPED.json; [] saves none",
                               min=1, default_factory=list)
    max_length: int = _f(512, "prompt + completion tokens kept per example (the rest is cut)", min=1, max=1_048_576)
    warmup_ratio: float = _f(0.1, "fraction of the optimizer steps spent warming the learning rate up, in [0, 1)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    lora_r: int = _f(16, "LoRA rank (method=lora)", min=1, max=65_536)
    lora_alpha: int = _f(32, "LoRA scaling numerator (method=lora)")
    lora_dropout: float = _f(0.0, "dropout on the LoRA path, in [0, 1) (method=lora)")
    dtype: str = _f("auto", "auto (bf16 autocast where the hardware runs it fast, else fp32) | float32 | bfloat16")
    gradient_checkpointing: bool = _f(False, "recompute activations in backward: less memory, ~30% more compute")
    padding_free: bool = _f(True, "concatenate a batch into one row with per-example position ids (no padding)")
    launcher: str = _f("none", "none (plain python) | ddp | fsdp | deepspeed (accelerate launch with configs/accelerate/<launcher>.yaml)")
    num_processes: int = _f(1, "processes (GPUs) in total for accelerate launch", min=1, max=65_536)
    num_machines: int = _f(1, "machines for accelerate launch", min=1, max=65_536)
    logging_steps: int = _f(1, "optimizer steps between two loss log entries")
    max_steps: int = _f(-1, "stop after this many optimizer steps (-1: run the full epochs)")
    seed: int = _f(0, "seed of the data order and of the LoRA initialisation")

    def runs_for(self, set_name: str) -> int:
        """Training runs of ``set_name``: ``runs_by_set`` when it names the set, else ``runs``."""
        return self.runs_by_set.get(set_name, self.runs)

    def __post_init__(self) -> None:
        def bad(key: str, allowed: str) -> ValueError:
            return ValueError(f"sft.{key}: must be {allowed}, got {getattr(self, key)!r}")

        if self.method not in _METHODS:
            raise bad("method", "one of " + ", ".join(_METHODS))
        if self.dtype not in _DTYPES:
            raise bad("dtype", "one of " + ", ".join(_DTYPES))
        if self.launcher not in _LAUNCHERS:
            raise bad("launcher", "one of " + ", ".join(_LAUNCHERS))
        for key in ("gradient_checkpointing", "padding_free"):
            if not isinstance(getattr(self, key), bool):
                raise bad(key, "true or false")
        ints = ("runs", "batch_size", "max_length", "lora_r", "lora_alpha", "num_processes",
                "num_machines", "logging_steps") + (() if self.grad_accum == "auto" else ("grad_accum",))
        for key in ints:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(key, "an integer >= 1")
        if isinstance(self.max_steps, bool) or not isinstance(self.max_steps, int) or self.max_steps == 0 or self.max_steps < -1:
            raise bad("max_steps", "-1 (use epochs) or an integer >= 1")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise bad("seed", "an integer")
        if not _is_number(self.epochs) or self.epochs <= 0:
            raise bad("epochs", "a number > 0")
        if not _is_number(self.learning_rate) or self.learning_rate <= 0:
            raise bad("learning_rate", "a number > 0")
        if not _is_number(self.weight_decay) or self.weight_decay < 0:
            raise bad("weight_decay", "a number >= 0")
        # transformers reads warmup values >= 1 as a step count, so a ratio must stay below 1
        if not _is_number(self.warmup_ratio) or not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "a number in [0, 1)")
        if not _is_number(self.lora_dropout) or not 0 <= self.lora_dropout < 1:
            raise bad("lora_dropout", "a number in [0, 1)")
        if self.launcher == "none" and (self.num_processes > 1 or self.num_machines > 1):
            raise ValueError(
                f"sft.launcher: 'none' runs one process, but sft.num_processes={self.num_processes} and "
                f"sft.num_machines={self.num_machines}; choose ddp | fsdp | deepspeed"
            )
        if self.precision not in _PRECISIONS:
            raise bad("precision", "one of " + ", ".join(_PRECISIONS))
        if self.precision == "bf16" and self.dtype == "float32":
            raise ValueError("sft.precision: bf16 keeps the weights in bfloat16, but sft.dtype is float32; "
                             "set sft.dtype: bfloat16 (or auto), or sft.precision: amp")
        if not isinstance(self.runs_by_set, dict) or any(
                not isinstance(k, str) or isinstance(v, bool) or not isinstance(v, int) or v < 1
                for k, v in self.runs_by_set.items()):
            raise bad("runs_by_set", "a mapping of set names to integers >= 1, e.g. {G: 6, H: 6}")
        if not isinstance(self.save_steps, list) or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.save_steps):
            raise bad("save_steps", "a list of optimizer steps (integers >= 1), e.g. [100, 200]")
        if len(set(self.save_steps)) != len(self.save_steps):
            raise bad("save_steps", "a list without repeats")
        if self.max_steps != -1 and any(s > self.max_steps for s in self.save_steps):
            raise ValueError(f"sft.save_steps: {self.save_steps} has a step after sft.max_steps={self.max_steps}; "
                             "that checkpoint would never be written")
        self._resolve_batch()

    @property
    def world_size(self) -> int:
        """Training processes in all: accelerate's --num_processes counts every process of every
        machine (16 processes on 2 machines run 8 per machine), so num_machines does not multiply."""
        return self.num_processes

    @property
    def sequences_per_step(self) -> int:
        """Sequences in one optimizer step: batch_size x grad_accum x processes (after ``auto``)."""
        return self.batch_size * int(self.grad_accum) * self.world_size

    def _resolve_batch(self) -> None:
        """``grad_accum: auto`` -> the accumulation that gives ``effective_batch_size``; a given
        grad_accum is checked against it. Both refusals name the keys to change."""
        eff = self.effective_batch_size
        if eff is not None and (isinstance(eff, bool) or not isinstance(eff, int) or eff < 1):
            raise ValueError(f"sft.effective_batch_size: must be null or an integer >= 1, got {eff!r}")
        per_micro_step = self.batch_size * self.world_size
        formula = (f"sft.batch_size={self.batch_size} x sft.num_processes={self.num_processes} "
                   f"(all processes of all {self.num_machines} machine(s))")
        if self.grad_accum == "auto":
            if eff is None:
                raise ValueError("sft.grad_accum: auto derives the accumulation from sft.effective_batch_size, "
                                 "which is null; set sft.effective_batch_size or an integer sft.grad_accum")
            if eff % per_micro_step:
                raise ValueError(
                    f"sft.grad_accum: auto cannot reach sft.effective_batch_size={eff}: {formula} = "
                    f"{per_micro_step} sequences per micro-step does not divide it; change sft.batch_size "
                    f"or sft.num_processes, or give sft.grad_accum with sft.effective_batch_size: null")
            self.grad_accum = eff // per_micro_step
            return
        if eff is not None and self.sequences_per_step != eff:
            raise ValueError(
                f"sft.grad_accum: {formula} x sft.grad_accum={self.grad_accum} = {self.sequences_per_step} "
                f"sequences per optimizer step, but sft.effective_batch_size={eff}; set sft.grad_accum: auto, "
                f"or sft.effective_batch_size: null to train with "
                f"{self.sequences_per_step} on purpose")

    @classmethod
    def help(cls) -> dict[str, str]:
        """Help text of each key (for the CLI and docs)."""
        return {f.name: f.metadata["help"] for f in fields(cls)}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
