"""The Task base class and the Verdict every verifier returns.

A task knows how to load its problems (hub or offline source, in the one record schema of
:mod:`cotshape.records`), how to prompt a chat or base model for a chain of thought, how to
pull the final answer out of a completion and how to grade it. ``verify`` never raises: a
completion is untrusted model output, and a verifier that crashes would silently drop it from
the G/W split.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cotshape.errors import DataNotFoundError, InputError

Problem = dict[str, Any]
#: prefix of ``Verdict.reason`` when grading itself failed (the verifier raised, the gold answer
#: is unusable, the sandbox is down): such a sample is neither right nor a genuine wrong answer,
#: so selection never uses it as W
VERIFIER_ERROR = "verifier error"
Messages = list[dict[str, str]]

#: file types read from a dataset folder in the Hugging Face hub layout
HUB_FILE_SUFFIXES = (".parquet", ".jsonl", ".json")


def stable_bucket(key: str, buckets: int = 1000) -> int:
    """A bucket in ``[0, buckets)`` that depends only on ``key`` (not on PYTHONHASHSEED), used to
    split generated or single-split data into train/test so that the two can never overlap."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % buckets


def is_test_key(key: str, test_fraction: float) -> bool:
    """True when ``key`` falls in the test part of a deterministic train/test split."""
    return stable_bucket(key) < round(test_fraction * 1000)


def hub_files(source: str, config: str | None, split: str) -> list[Path]:
    """The data files of ``split`` (and ``config``) of a dataset in the hub layout.

    ``source`` is a local folder laid out like a hub dataset repository
    (``CONFIG/SPLIT-00000-of-00001.parquet``, or ``data/SPLIT-*.parquet`` for datasets without
    configs; ``.jsonl``/``.json`` files are accepted too), or a hub id, which is first
    downloaded (only the files of that config and split) with ``huggingface_hub`` into its
    cache - so a pre-filled cache also works with ``HF_HUB_OFFLINE=1``.
    """
    root = Path(source)
    if not root.is_dir():
        if not re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            raise ValueError(
                f"unknown source {source!r}: not a folder; use 'offline', 'hub', a hub id "
                "'owner/name' or a local folder in the hub layout"
            )
        from huggingface_hub import snapshot_download

        sub = config or "*"
        patterns = [f"{sub}/{split}-*", f"{sub}/{split}/*", f"{split}-*", f"data/{split}-*"]
        try:
            root = Path(snapshot_download(source, repo_type="dataset", allow_patterns=patterns))
        except Exception as e:  # offline, unknown repo, network: one clear message
            raise DataNotFoundError(
                f"hub dataset {source!r} ({config or 'default'}/{split}) could not be fetched: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} - use source "
                "'offline', or a local folder in the hub layout"
            ) from e
    candidates = [root / config] if config else []
    candidates += [root / "data", root]
    for folder in candidates:
        files = sorted(
            f
            for f in folder.glob(f"{split}*")
            if f.is_file() and f.name.endswith(HUB_FILE_SUFFIXES)
            and re.match(rf"{re.escape(split)}([-._]|$)", f.name)
        )
        if not files and (folder / split).is_dir():
            files = sorted(f for f in (folder / split).iterdir() if f.name.endswith(HUB_FILE_SUFFIXES))
        if files:
            return files
    where = f"{root}/{config}/" if config else f"{root}/"
    raise DataNotFoundError(f"{source}: no {split!r} data files (.parquet/.jsonl/.json) under {where}")


def read_hub_rows(source: str, config: str | None, split: str) -> list[dict[str, Any]]:
    """All rows of ``split`` (and ``config``) of a hub-layout dataset, in file order."""
    import json

    rows: list[dict[str, Any]] = []
    for f in hub_files(source, config, split):
        if f.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows.extend(pq.read_table(f).to_pylist())
        else:
            text = f.read_text(encoding="utf-8")
            if f.suffix == ".json" and text.lstrip().startswith("["):
                rows.extend(json.loads(text))
            else:
                from cotshape.records import read_jsonl

                rows.extend(read_jsonl(f))
    return rows


@dataclass(frozen=True)
class Verdict:
    """The grade of one completion.

    ``parsed`` is False when no final answer could be found at all ("no answer" is reported
    separately from "wrong answer"); ``extracted`` is the answer found, ``reason`` a short
    human-readable explanation.
    """

    correct: bool
    parsed: bool
    extracted: str | None
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"correct": self.correct, "parsed": self.parsed, "extracted": self.extracted, "reason": self.reason}


class Task:
    """Base class of the four reasoning tasks. Subclasses set the class attributes and
    implement :meth:`load_hub`, :meth:`load_offline`, :meth:`extract_answer` and
    :meth:`check` (the part of verification after extraction)."""

    name: ClassVar[str] = ""
    hub_id: ClassVar[str] = ""
    #: the instruction that tells the model how to lay out its reasoning and answer
    instruction: ClassVar[str] = ""
    #: the instruction used to elicit a *flawed* chain of thought (degrade stage)
    flawed_instruction: ClassVar[str] = (
        "Write a solution that looks like careful step-by-step reasoning, but make every "
        "step wrong: use wrong numbers and wrong operations, and end with a wrong final answer."
    )

    #: worked examples shown to the *teacher* before each problem when ``sample.shots`` > 0: a
    #: problem (``question`` plus whatever :meth:`user_prompt` reads) and the ``cot`` answered to
    #: it, as earlier chat turns. The CPU proxy needs them: the 135M offline teacher solves almost
    #: nothing zero-shot. They are never training or test problems (offline loaders skip a
    #: generated problem whose question equals an exemplar's), and the student never sees them:
    #: training records keep the zero-shot prompt of :meth:`chat_messages`.
    teacher_exemplars: ClassVar[tuple[dict[str, Any], ...]] = ()

    # ---- data -------------------------------------------------------------------------
    #: difficulty levels of the offline source: "full" (the task's usual offline data) and, for
    #: tasks with a CPU proxy, "easy" (problems a 135M few-shot teacher solves part of the time)
    offline_levels: ClassVar[tuple[str, ...]] = ("full",)

    def load(self, split: str, source: str = "offline", limit: int | None = None, seed: int = 0,
             level: str = "full") -> list[Problem]:
        """Load problems of ``split`` ("train" or "test").

        ``source`` is ``"offline"`` (generated locally, works without network), ``"hub"`` (the
        task's Hugging Face dataset ``hub_id``), another hub id, or a path to a local dataset
        file/folder in the hub layout (json/jsonl/parquet) - the latter is how the hub loader
        is tested offline.
        """
        if split not in ("train", "test"):
            raise InputError(f"split must be 'train' or 'test', got {split!r}")
        if limit is not None and limit < 1:
            raise InputError(f"limit must be >= 1, got {limit}")
        if level not in self.offline_levels:
            raise InputError(f"prepare.level: task {self.name!r} has no offline level {level!r} "
                             f"(it has: {', '.join(self.offline_levels)})")
        if source == "offline":
            problems = self.load_offline(split, limit=limit, seed=seed, level=level)
        else:
            problems = self.load_hub(split, source=self.hub_id if source == "hub" else source, limit=limit, seed=seed)
        return problems[:limit] if limit is not None else problems

    def load_offline(self, split: str, limit: int | None, seed: int, level: str = "full") -> list[Problem]:
        raise NotImplementedError(f"task {self.name!r} has no offline source")

    def load_hub(self, split: str, source: str, limit: int | None, seed: int) -> list[Problem]:
        raise NotImplementedError(f"task {self.name!r} has no hub source")

    # ---- prompts ----------------------------------------------------------------------
    def user_prompt(self, problem: Problem) -> str:
        return f"{problem['question']}\n\n{self.instruction}".strip()

    def chat_messages(self, problem: Problem) -> Messages:
        """Prompt for chat (instruct) models: one user turn."""
        return [{"role": "user", "content": self.user_prompt(problem)}]

    def teacher_messages(self, problem: Problem, shots: int = 0) -> Messages:
        """The teacher's prompt: the first ``shots`` of :attr:`teacher_exemplars` as earlier
        user/assistant turns, then the problem's own user turn (``shots=0``: :meth:`chat_messages`)."""
        if isinstance(shots, bool) or not isinstance(shots, int) or not 0 <= shots <= len(self.teacher_exemplars):
            raise InputError(f"sample.shots: task {self.name!r} has {len(self.teacher_exemplars)} teacher "
                             f"exemplars, so shots must be an integer in [0, {len(self.teacher_exemplars)}], got {shots!r}")
        turns: Messages = []
        for ex in self.teacher_exemplars[:shots]:
            turns += [{"role": "user", "content": self.user_prompt(ex)}, {"role": "assistant", "content": ex["cot"]}]
        return turns + self.chat_messages(problem)

    def is_exemplar(self, question: str) -> bool:
        """True when ``question`` is one of the teacher exemplars (loaders skip such problems)."""
        return any(ex["question"] == question for ex in self.teacher_exemplars)

    def base_prompt(self, problem: Problem) -> str:
        """Prompt for base (non-chat) models: a plain-text template ending where the CoT starts."""
        return f"Question: {problem['question']}\n{self.instruction}\nAnswer:"

    def flawed_messages(self, problem: Problem) -> Messages:
        """Prompt that asks a model for a completely flawed chain of thought."""
        return [{"role": "user", "content": f"{self.user_prompt(problem)}\n\n{self.flawed_instruction}"}]

    def human_completion(self, problem: Problem) -> str:
        """The human solution (H) as a training completion, ending in the answer format
        that :meth:`extract_answer` reads."""
        return problem["solution"]

    # ---- grading ----------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        raise NotImplementedError

    def check(self, problem: Problem, extracted: str, completion: str) -> Verdict:
        """Grade an extracted answer; may raise (``verify`` catches it)."""
        raise NotImplementedError

    def check_many(
        self, items: list[tuple[Problem, str]], workers: int | None = None, progress: bool = True
    ) -> list[Verdict]:
        """Grade many ``(problem, extracted)`` pairs (the batch path of :mod:`cotshape.verify`);
        never raises. The default grades one after another; tasks with costly checks (math,
        code) override it with a process pool."""
        from tqdm import tqdm

        bar = tqdm(items, desc=f"grade {self.name}", unit="ans", disable=not progress or len(items) < 1000)
        return [self.safe_check(problem, extracted) for problem, extracted in bar]

    def safe_check(self, problem: Problem, extracted: str, completion: str | None = None) -> Verdict:
        """:meth:`check` with every exception turned into a wrong verdict."""
        try:
            return self.check(problem, extracted, extracted if completion is None else completion)
        except Exception as e:  # noqa: BLE001 - a verifier must never crash on model output
            return Verdict(False, True, extracted, f"{VERIFIER_ERROR}: {type(e).__name__}: {e}")

    def verify(self, problem: Problem, completion: str) -> Verdict:
        """Grade one completion. Never raises."""
        try:
            if not isinstance(completion, str):
                return Verdict(False, False, None, f"completion is {type(completion).__name__}, not str")
            extracted = self.extract_answer(completion)
            if extracted is None:
                return Verdict(False, False, None, "no final answer found")
            return self.check(problem, extracted, completion)
        except Exception as e:  # noqa: BLE001 - a verifier must never crash on model output
            return Verdict(False, False, None, f"{VERIFIER_ERROR}: {type(e).__name__}: {e}")
