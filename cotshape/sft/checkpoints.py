"""The SFT output folder: where intermediate checkpoints go (:func:`checkpoint_dir`), saving a
trained model in the loadable layout (:func:`save_folder`, with :data:`MARKER`), the callback that
saves at ``sft.save_steps`` (:func:`checkpoint_saver`), the atomic swap into place
(:func:`replace_dir`) and loading it back for evaluation (:func:`load_trained`)."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotshape.core.artifacts import CHECKPOINTS, SFT_MARKER, SKIPPED, STEP_PREFIX
from cotshape.sft.config import training_dtype

#: Written in every checkpoint folder; says how to load it (see :func:`load_trained`).
MARKER = SFT_MARKER


def checkpoint_dir(out_dir: str | os.PathLike, step: int) -> Path:
    """Where train_sft saves the checkpoint of optimizer step ``step`` (``sft.save_steps``):
    ``<out>/checkpoints/step-<step>``, inside the SFT output folder (so the stage's out holds it)."""
    return Path(out_dir) / CHECKPOINTS / f"{STEP_PREFIX}{int(step)}"


def save_folder(trainer, folder: Path, tokenizer, marker: dict[str, Any], model, restore_attn: str | None,
                 main: bool, card_name: str | None = None, files: dict[str, str] | None = None) -> None:
    """Save the trainer's model to ``folder`` in the loadable layout of :func:`load_trained`:
    weights (full) or adapter (LoRA), tokenizer, ``files`` (name -> text) and :data:`MARKER`.
    ``card_name``: TRL's model card (trainer, framework versions, citation; no dates or paths, so
    the DVC out stays reproducible) as ``README.md`` under that model name, in place of PEFT's
    template card; without it (a checkpoint) no card. Runs on every process (FSDP/DeepSpeed
    gather the weights there); only the main one writes."""
    if restore_attn is not None:  # the saved config must not name an attention only we register
        model.set_attn_implementation(restore_attn)  # the base model, under any peft wrapper
    trainer.save_model(str(folder))
    trainer.accelerator.wait_for_everyone()
    if main:
        tokenizer.save_pretrained(folder)
        (folder / "README.md").unlink(missing_ok=True)  # PEFT's template card
        if card_name is not None:  # from_pretrained ignores README.md
            os.makedirs(trainer.args.output_dir, exist_ok=True)  # may be folder/trainer: removed below
            trainer.create_model_card(model_name=card_name)
            os.replace(Path(trainer.args.output_dir) / "README.md", folder / "README.md")
        shutil.rmtree(folder / "trainer", ignore_errors=True)
        (folder / "training_args.bin").unlink(missing_ok=True)
        for name, text in (files or {}).items():
            (folder / name).write_text(text, encoding="utf-8")
        (folder / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def checkpoint_saver(steps: Sequence[int], root: Path, save, main: bool):
    """A callback that calls ``save(folder, step)`` after each optimizer step in ``steps`` (the
    folder: :func:`checkpoint_dir` under ``root``). A step the run never reaches (a small set:
    MBPP's 374 problems at 64 per step make 6 steps an epoch) gets a folder with only the
    pipeline's ``SKIPPED.json``, the way an empty training set is recorded, so that its evaluate
    stage writes "not evaluated" instead of failing; its ``.not_reached`` lists them."""
    from transformers import TrainerCallback

    class CheckpointSaver(TrainerCallback):
        def __init__(self) -> None:
            self.steps = sorted(set(int(s) for s in steps))
            self.saved: list[int] = []
            self.not_reached: list[int] = []

        def on_step_end(self, args, state, control, **kwargs):
            step = int(state.global_step)
            if step in self.steps and step not in self.saved:
                save(checkpoint_dir(root, step), step)
                self.saved.append(step)

        def on_train_end(self, args, state, control, **kwargs):

            self.not_reached = [s for s in self.steps if s not in self.saved]
            for step in self.not_reached if main else ():
                folder = checkpoint_dir(root, step)
                folder.mkdir(parents=True, exist_ok=True)
                reason = f"the run ended after {state.global_step} optimizer steps, before step {step} (sft.save_steps)"
                (folder / SKIPPED).write_text(json.dumps({"reason": reason}) + "\n", encoding="utf-8")
            if self.not_reached and main:
                print(f"sft.save_steps: {self.not_reached} not reached (the run has {state.global_step} steps)",
                      file=sys.stderr)

    return CheckpointSaver()


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``, replacing an existing ``dst`` with at most an instant without it."""
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _load_base(base: str, torch_dtype, marker_path: Path | None = None):
    """The base model of a LoRA adapter, from a folder or (online) a hub id; offline, a missing
    folder is one FileNotFoundError naming the checkpoint that recorded it."""
    from transformers import AutoModelForCausalLM

    if not Path(base).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        where = f"{marker_path}: " if marker_path is not None else ""
        raise FileNotFoundError(f"{where}base model {base!r} not found (pass base_model=...)")
    return AutoModelForCausalLM.from_pretrained(base, dtype=torch_dtype)


def load_trained(out_dir: str | os.PathLike, device: str = "cpu", dtype: str = "float32",
                 base_model: str | os.PathLike | None = None, shared_base: LoraBase | None = None):
    """The model in a train_sft folder, ready for generation/evaluation (eval mode, on
    ``device``, in ``dtype``). A LoRA adapter is applied to its base model (``base_model``, or
    the one recorded at training time) and merged, so callers get a plain transformers model.
    The tokenizer is in the same folder: ``AutoTokenizer.from_pretrained(out_dir)``.

    ``shared_base`` (a :class:`LoraBase` of that base model, on CPU): the adapter is merged into
    it instead of a fresh load, so several runs of a set load their base once. The returned model
    is then the shared base's own object, valid until the next ``load_trained`` with it."""
    import torch

    out_dir = Path(out_dir)
    marker_path = out_dir / MARKER
    if not marker_path.exists():
        raise FileNotFoundError(f"{marker_path}: not a cotshape SFT checkpoint (no {MARKER})")
    marker = json.loads(marker_path.read_text(encoding="utf-8"))
    torch_dtype = getattr(torch, training_dtype(dtype))
    if marker["method"] == "full":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch_dtype)
    else:
        from peft import PeftModel

        base = str(base_model or marker["base_model"])
        if shared_base is not None and (shared_base.path, shared_base.dtype) == (base, torch_dtype) and device == "cpu":
            model = shared_base.restored()
        else:
            model = _load_base(base, torch_dtype, marker_path)
        model = PeftModel.from_pretrained(model, out_dir).merge_and_unload()
    return model.to(device).eval()


class LoraBase:
    """One base model on CPU for the LoRA runs of a stage (the evaluate stage: ``sft.runs``
    adapters of one base). It is loaded once, with a copy of its weights; :meth:`restored` copies
    them back before each adapter is merged, so every run gets the same weights, bit for bit, as a
    fresh load would give (a test compares the two). Measured on Gemma-3-270M (2 cores): a fresh
    load with merge takes ~5 s a run, the restore ~0.1 s."""

    def __init__(self, path: str | os.PathLike, dtype: str = "float32") -> None:
        import torch

        self.path = str(path)
        self.dtype = getattr(torch, training_dtype(dtype))
        self.model = _load_base(self.path, self.dtype)
        self._weights = {name: t.detach().clone() for name, t in self._tensors()}

    def _tensors(self):
        yield from self.model.named_parameters()
        yield from self.model.named_buffers()

    def restored(self):
        """The base model with its loaded weights back (a merge wrote into them in place)."""
        import torch

        with torch.no_grad():
            for name, t in self._tensors():
                t.copy_(self._weights[name])
        return self.model
