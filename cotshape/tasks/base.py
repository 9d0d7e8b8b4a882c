"""The Task base class and the Verdict every verifier returns.

A task knows how to load its problems (hub or offline source, in the one record schema of
:mod:`cotshape.core.records`), how to prompt a chat or base model for a chain of thought, how to
pull the final answer out of a completion and how to grade it (strictly, :meth:`Task.verify`,
or as the authors' scripts did, :meth:`Task.paper_verify`). :func:`student_prompt` is the one
place that turns (task, problem, ``base.prompt_format``, tokenizer) into a student's prompt text. ``verify`` never raises: a
completion is untrusted model output, and a verifier that crashes would silently drop it from
the G/W split.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from cotshape.core.errors import DataNotFoundError, InputError

Problem = dict[str, Any]
#: prefix of ``Verdict.reason`` when grading itself failed (the verifier raised, the gold answer
#: is unusable, the sandbox is down): such a sample is neither right nor a genuine wrong answer,
#: so selection never uses it as W
VERIFIER_ERROR = "verifier error"
Messages = list[dict[str, str]]

#: file types read from a dataset folder in the Hugging Face hub layout
HUB_FILE_SUFFIXES = (".parquet", ".jsonl", ".json")

#: how a *student* is prompted (``base.prompt_format``): ``chat`` renders the task's one-turn chat
#: prompt with the student's chat template; ``plain`` is the authors' plain-text template for base
#: students (:meth:`Task.base_prompt`, e.g. "...Problem:\n{problem}\n\nSolution:"). The teacher (an
#: instruct model) is always prompted in chat.
PROMPT_FORMATS = ("chat", "plain")
#: what joins a plain prompt (ending in "Solution:") and its completion in SFT: the authors'
#: few-shot exemplars (eval_math_gsm8k.py, eval_countdown.py) write "Solution:\n<solution>"
PLAIN_SEPARATOR = "\n"

#: the authors' zero-shot template for MATH and GSM8K (eval_math_gsm8k.py, ZERO_SHOT_TEMPLATE)
MATH_PLAIN_TEMPLATE = (
    "You are a math expert. I am going to give you a math Problem that you need to solve. When you "
    "respond, respond only with the Solution, thinking step by step. At the end of the Solution, when "
    "you give your final answer, write it in the form \"Final Answer: The final answer is $answer$. I "
    "hope it is correct.\"\n\nProblem:\n{problem}\n\nSolution:"
)


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
                from cotshape.core.records import read_jsonl

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

    # ---- evaluation as the authors ran it ----------------------------------------------
    #: greedy evaluation length of the paper (``evaluate.max_new_tokens: auto``): MAX_TOKENS of
    #: the authors' eval scripts (2,048 in eval_math_gsm8k.py, 4,096 in eval_countdown.py,
    #: 1,024 in gen_plus_eval_codegen_mbpp.py)
    eval_max_new_tokens: ClassVar[int] = 2048
    #: stop strings of the plain-text prompt (vLLM ``SamplingParams(stop=...)`` in the authors'
    #: scripts): a base model that finished its solution starts the next "Problem:"
    plain_stop: ClassVar[tuple[str, ...]] = ("Problem:",)

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
        """Prompt for base (non-chat) models (``base.prompt_format: plain``): a plain-text template
        ending where the CoT starts. The four paper tasks use the authors' zero-shot templates;
        this default follows their layout (instruction, "Problem:", "Solution:")."""
        return f"{self.instruction}\n\nProblem:\n{problem['question']}\n\nSolution:"

    def stop_strings(self, prompt_format: str) -> list[str]:
        """Stop strings of a student's generation: the task's :attr:`plain_stop` with a plain
        prompt, none with a chat prompt (the end-of-turn token ends it)."""
        return list(self.plain_stop) if prompt_format == "plain" else []

    def flawed_messages(self, problem: Problem) -> Messages:
        """Prompt that asks a model for a completely flawed chain of thought."""
        return [{"role": "user", "content": f"{self.user_prompt(problem)}\n\n{self.flawed_instruction}"}]

    def human_completion(self, problem: Problem) -> str:
        """The human solution (H) as a training completion, ending in the answer format
        that :meth:`extract_answer` reads."""
        return problem["solution"]

    #: whether decontamination compares texts (questions: exact, n-gram, fuzzy; completions:
    #: n-gram, exact); False for a task whose problem and derivation are generated from its
    #: structure (Countdown: "make T from a, b, c" and "Step 1: 7 * 1 = 7": one changed number is
    #: another problem, yet a text 96 % alike, and 8-grams of a few digits and template words are
    #: shared by chance), where :meth:`structure_key` is the exact check
    decontaminate_text: ClassVar[bool] = True

    def structure_key(self, problem: Problem) -> Any:
        """What makes two problems the same problem whatever their wording, for decontamination
        (:func:`cotshape.data.decontaminate.check_sets`, method ``structure``): None (the default)
        when the task has no such structure beyond its text."""
        return None

    # ---- grading ----------------------------------------------------------------------
    def extract_answer(self, completion: str) -> str | None:
        raise NotImplementedError

    def check(self, problem: Problem, extracted: str, completion: str) -> Verdict:
        """Grade an extracted answer; may raise (``verify`` catches it)."""
        raise NotImplementedError

    def check_many(
        self, items: list[tuple[Problem, str]], workers: int | None = None, progress: bool = True
    ) -> list[Verdict]:
        """Grade many ``(problem, extracted)`` pairs (the batch path of :mod:`cotshape.data.verify`);
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

    def paper_verify(self, problem: Problem, completion: str) -> Verdict:
        """Grade one completion the way the authors' released scorer does (``evaluate.scoring:
        paper``); never raises. The default is :meth:`verify` (a task without a paper scorer)."""
        return self.verify(problem, completion)

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


# ---- the student's prompt ------------------------------------------------------------------
def check_prompt_format(prompt_format: str) -> str:
    if prompt_format not in PROMPT_FORMATS:
        raise InputError(f"base.prompt_format: must be one of {', '.join(PROMPT_FORMATS)}, got {prompt_format!r}")
    return prompt_format


def special_prefix(tokenizer) -> str:
    """The special tokens the tokenizer puts before a text by itself (BOS for Llama and Gemma,
    nothing for Qwen or SmolLM2), as text.

    A plain prompt starts with them, and every stage then tokenizes the prompt text with
    ``add_special_tokens=False``: the ids are those vLLM and TRL get from the bare template (both
    tokenize text with special tokens), and a chat-rendered prompt (which carries its own BOS)
    goes through the same path without a second BOS."""
    if tokenizer is None:
        return ""
    probe = "a"
    with_special = tokenizer(probe)["input_ids"]
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    # where the bare text sits among the ids with special tokens (a tokenizer may add EOS too)
    k = next((i for i in range(len(with_special) - len(bare) + 1) if with_special[i:i + len(bare)] == bare), 0)
    return tokenizer.decode(with_special[:k]) if k else ""


def student_prompt(task: Task, problem: Problem, prompt_format: str, tokenizer=None) -> str:
    """The exact text a student model reads before its completion, for every stage that prompts
    a student: SFT tokenization and closeness (:func:`cotshape.sft.tokenize.tokenize_records`),
    evaluation, and the student side of paraphrase. Tokenize it with ``add_special_tokens=False``.

    ``chat``: :meth:`Task.chat_messages` rendered with the tokenizer's chat template and the
    generation prompt (what the generation backends render for chat messages). ``plain``: the
    tokenizer's leading special tokens (:func:`special_prefix`) + :meth:`Task.base_prompt`.
    A tokenizer without a chat template works with ``plain`` only; with ``chat`` it is an
    :class:`InputError` naming ``base.prompt_format``.
    """
    check_prompt_format(prompt_format)
    if prompt_format == "plain":
        return special_prefix(tokenizer) + task.base_prompt(problem)
    from cotshape.generation.base import render_chat

    return render_chat(tokenizer, task.chat_messages(problem))
