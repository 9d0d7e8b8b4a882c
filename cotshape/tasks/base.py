"""The Task base class and the Verdict every verifier returns.

A task knows how to load its problems (hub or offline source, in the one record schema of
:mod:`cotshape.records`), how to prompt a chat or base model for a chain of thought, how to
pull the final answer out of a completion and how to grade it. ``verify`` never raises: a
completion is untrusted model output, and a verifier that crashes would silently drop it from
the G/W split.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

Problem = dict[str, Any]
Messages = list[dict[str, str]]


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

    # ---- data -------------------------------------------------------------------------
    def load(self, split: str, source: str = "offline", limit: int | None = None, seed: int = 0) -> list[Problem]:
        """Load problems of ``split`` ("train" or "test").

        ``source`` is ``"offline"`` (generated locally, works without network), ``"hub"`` (the
        task's Hugging Face dataset ``hub_id``), another hub id, or a path to a local dataset
        file/folder in the hub layout (json/jsonl/parquet) - the latter is how the hub loader
        is tested offline.
        """
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if limit is not None and limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        if source == "offline":
            problems = self.load_offline(split, limit=limit, seed=seed)
        else:
            problems = self.load_hub(split, source=self.hub_id if source == "hub" else source, limit=limit, seed=seed)
        return problems[:limit] if limit is not None else problems

    def load_offline(self, split: str, limit: int | None, seed: int) -> list[Problem]:
        raise NotImplementedError(f"task {self.name!r} has no offline source")

    def load_hub(self, split: str, source: str, limit: int | None, seed: int) -> list[Problem]:
        raise NotImplementedError(f"task {self.name!r} has no hub source")

    # ---- prompts ----------------------------------------------------------------------
    def user_prompt(self, problem: Problem) -> str:
        return f"{problem['question']}\n\n{self.instruction}".strip()

    def chat_messages(self, problem: Problem) -> Messages:
        """Prompt for chat (instruct) models: one user turn."""
        return [{"role": "user", "content": self.user_prompt(problem)}]

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
            return Verdict(False, False, None, f"verifier error: {type(e).__name__}: {e}")

    # ---- steps (degrade stage) --------------------------------------------------------
    def split_steps(self, cot: str) -> list[str]:
        """Split a chain of thought into steps (non-empty lines, or sentences for one-line CoTs)."""
        lines = [ln for ln in cot.split("\n") if ln.strip()]
        if len(lines) > 1:
            return lines
        return [s for s in re.split(r"(?<=[.!?])\s+", cot.strip()) if s]

    def join_steps(self, steps: list[str]) -> str:
        return "\n".join(steps)
