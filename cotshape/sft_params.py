"""The ``sft:`` section of params.yaml: :class:`SFTParams`, pure data and validation.

Kept apart from :mod:`cotshape.train` (which re-exports it) so that :mod:`cotshape.config`, and
with it every stage, does not depend on the trainer's code: a change to training reruns only
the stages that train. This module imports nothing from torch, transformers, trl or
:mod:`cotshape.train`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

_METHODS = ("lora", "full")
_DTYPES = ("auto", "float32", "bfloat16")
_LAUNCHERS = ("none", "ddp", "fsdp", "deepspeed")


def _f(default: Any, help: str, *, choices: tuple | None = None, min: float | None = None,
       max: float | None = None) -> Any:
    # the same metadata as cotshape.config's fields: the params validator checks choices and bounds
    return field(default=default, metadata={"help": help, "choices": choices, "min": min, "max": max})


@dataclass
class SFTParams:
    """The ``sft:`` section of params.yaml (plus ``seed``, taken from ``base.seed``)."""

    method: str = _f("lora", "lora (peft adapters on attention + MLP projections) | full (all weights)")
    epochs: float = _f(2.0, "passes over the training set (fractions allowed)", max=10_000)
    learning_rate: float = _f(2e-4, "peak AdamW learning rate (linear decay after warmup)")
    batch_size: int = _f(8, "examples per device per micro-step", min=1, max=65_536)
    grad_accum: int = _f(1, "micro-steps accumulated per optimizer step", min=1, max=65_536)
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
        ints = ("batch_size", "grad_accum", "max_length", "lora_r", "lora_alpha", "num_processes",
                "num_machines", "logging_steps")
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

    @classmethod
    def help(cls) -> dict[str, str]:
        """Help text of each key (for the CLI and docs)."""
        return {f.name: f.metadata["help"] for f in fields(cls)}


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
