"""Names of the files a stage leaves in a folder, and the names of the training sets, in one place.

An SFT output folder (``models/sft/TASK/SET``) holds either a trained model with
:data:`SFT_MARKER` (how to load it), or only :data:`SKIPPED` (why nothing was trained); the
MLflow run that trained it is in :data:`SFT_RUN_FILE`; intermediate checkpoints sit in
``checkpoints/step-N``. A set trained ``sft.runs`` times keeps one such folder per training run,
``models/sft/TASK-SET/run-R`` (R = 0, 1, ...; SFT seed ``base.sft_seed + R``); a skipped set has
only :data:`SKIPPED` at its top. Training sets are ``H``, ``G``, ``W``, ``P``, the step-degraded sets
``step-K`` (K corrupted steps per CoT) and the flawed mixtures ``mix-P`` (a fraction P of the CoTs
completely flawed). Every module that builds or reads these names uses the functions here.
"""

from __future__ import annotations

from dataclasses import dataclass

#: in every SFT output folder that holds a model: how to load it (full weights or a LoRA adapter)
SFT_MARKER = "cotshape_sft.json"
#: the only file of an SFT output folder when nothing was trained (empty set, step not reached)
SKIPPED = "SKIPPED.json"
#: in an SFT output folder: the MLflow run that trained it
SFT_RUN_FILE = "mlflow_run.json"
#: the training log (loss per step) beside the model
TRAIN_LOG = "train_log.json"
#: intermediate checkpoints (sft.save_steps): <out>/checkpoints/step-<N>, each loadable like <out>
CHECKPOINTS = "checkpoints"
#: prefix of a checkpoint folder (``step-100``) and of a step-degraded set (``step-2``)
STEP_PREFIX = "step-"
#: prefix of a flawed-mixture set (``mix-0.25``)
MIX_PREFIX = "mix-"
#: prefix of one training run's folder inside a set's SFT folder (``run-0``)
RUN_PREFIX = "run-"


def run_dir(set_dir, run: int):
    """The folder of training run ``run`` of a set: ``<set_dir>/run-<run>``."""
    from pathlib import Path

    return Path(set_dir) / f"{RUN_PREFIX}{int(run)}"


def run_dirs(set_dir) -> list:
    """The training-run folders of a set's SFT folder, by run index (``run-0``, ``run-1``, ...);
    [] when it has none (a skipped set, or no folder)."""
    from pathlib import Path

    found = []
    root = Path(set_dir)
    if root.is_dir():
        for p in root.iterdir():
            rest = p.name[len(RUN_PREFIX):]
            if p.is_dir() and p.name.startswith(RUN_PREFIX) and rest.isdigit():
                found.append((int(rest), p))
    return [p for _, p in sorted(found)]


def mix_set_name(fraction: float) -> str:
    """The training-set name of a flawed mixture: ``mix-0.25`` (Python float repr, as DVC renders it)."""
    return f"{MIX_PREFIX}{float(fraction)}"


def step_set_name(k: int) -> str:
    """The training-set name of the step-degraded set with ``k`` corrupted steps: ``step-2``."""
    return f"{STEP_PREFIX}{int(k)}"


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint saved after optimizer step ``step``: ``step-100``."""
    return f"{STEP_PREFIX}{int(step)}"


@dataclass(frozen=True)
class SetName:
    """A parsed set name: ``kind`` is ``"mix"`` (``value`` the flawed fraction), ``"step"``
    (``value`` the number of corrupted steps) or ``"plain"`` (H, G, W, P, base, ...; ``value`` None)."""

    name: str
    kind: str
    value: float | int | None = None


def parse_set_name(name: str) -> SetName:
    """``mix-0.25`` -> mix 0.25; ``step-2`` -> step 2; anything else (also ``mix-x``) -> plain."""
    if name.startswith(MIX_PREFIX):
        try:
            return SetName(name, "mix", float(name[len(MIX_PREFIX):]))
        except ValueError:
            return SetName(name, "plain")
    rest = name[len(STEP_PREFIX):]
    if name.startswith(STEP_PREFIX) and rest.isdigit():
        return SetName(name, "step", int(rest))
    return SetName(name, "plain")


def is_mix(name: str) -> bool:
    return parse_set_name(name).kind == "mix"


def is_step(name: str) -> bool:
    return parse_set_name(name).kind == "step"


def set_sort_key(name: str, order: tuple[str, ...] | list[str]) -> tuple[int, float, str]:
    """Sort key for set names: the names of ``order`` first in that order (``step-K`` right after
    ``"step"`` when ``order`` has it, else at its end, by K), then mixtures by fraction, then the
    rest by name."""
    parsed = parse_set_name(name)
    if name in order:
        return (0, float(list(order).index(name)), "")
    if parsed.kind == "step":
        anchor = list(order).index("step") if "step" in order else len(order)
        return (0, anchor + parsed.value / 1000, "")
    if parsed.kind == "mix":
        return (1, float(parsed.value), "")
    return (2, 0.0, name)


#: in a task's sets folder (``data/sets/TASK``): the problems every set is compared on (select)
IDS_FILE = "ids.json"


def training_set_files(sets_dir) -> list:
    """The training sets of a task's sets folder, in report order: ``H.jsonl``, ``G.jsonl``, ... (by
    name), then ``step/step-K.jsonl`` by K, then ``mix/mix-P.jsonl`` by the fraction."""
    from pathlib import Path

    root = Path(sets_dir)

    def by_set(f):
        return set_sort_key(f.stem, ())

    return (sorted(root.glob("*.jsonl")) + sorted((root / "step").glob(f"{STEP_PREFIX}*.jsonl"), key=by_set)
            + sorted((root / "mix").glob(f"{MIX_PREFIX}*.jsonl"), key=by_set))

