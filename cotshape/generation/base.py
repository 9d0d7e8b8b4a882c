"""The one generation interface every backend implements.

Prompts in (chat messages or plain text), for each prompt ``n`` completions out, each with its
text, token count and finish reason. Backends: ``transformers`` (CPU and GPU) and ``vllm``
(GPU, optional extra ``gpu``).

Seeds: sample ``j`` of prompt ``i`` draws its random numbers from its own generator seeded with
``derive_seed(seeds[i], j)``, where ``seeds`` defaults to ``derive_seed(params.seed, i)``. A
caller that wants samples independent of the order and grouping of prompts (the resumable
sampling job) passes ``seeds`` keyed by something stable, such as the problem id.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from cotshape.core.errors import InputError

Prompt = list[dict[str, str]] | str  # chat messages or raw text
FinishReason = Literal["stop", "length"]
ProgressFn = Callable[[int], None]
ResultFn = Callable[[int, list["Completion"]], None]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across runs, machines and Python
    versions, unlike ``hash``)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass
class SamplingParams:
    """Decoding settings. ``temperature == 0`` means greedy decoding (and ``n`` must be 1)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_new_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n < 1:
            raise InputError(f"n must be >= 1, got {self.n}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError(f"stop must be a list of non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: FinishReason  # "stop": EOS or a stop string; "length": hit max_new_tokens


def prompt_seeds(params: SamplingParams, n_prompts: int, seeds: list[int] | None) -> list[int]:
    """The per-prompt seeds: ``seeds`` as given, or derived from ``params.seed`` and the index."""
    if seeds is None:
        return [derive_seed(params.seed, i) for i in range(n_prompts)]
    if len(seeds) != n_prompts:
        raise InputError(f"got {len(seeds)} seeds for {n_prompts} prompts")
    return [int(s) for s in seeds]


def truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; returns ``(text, stopped)``."""
    cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


NO_CHAT_TEMPLATE = (
    "the model's tokenizer has no chat template (a base model?): a base student needs "
    "base.prompt_format: plain (the authors' plain-text prompts) instead of chat; the teacher is "
    "always prompted in chat and must be an instruct model"
)


def render_chat(tokenizer, messages: list[dict[str, str]]) -> str:
    """Chat messages rendered with the tokenizer's chat template and the generation prompt: the
    text a chat prompt is, tokenized with ``add_special_tokens=False`` (the template writes its
    own BOS). A tokenizer without a chat template is an :class:`InputError` naming
    ``base.prompt_format``."""
    if tokenizer is None or getattr(tokenizer, "chat_template", None) is None:
        raise InputError(NO_CHAT_TEMPLATE)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


class Backend:
    """A loaded model that generates. Subclasses implement :meth:`generate`.

    A prompt is chat messages (rendered by :func:`render_chat`) or text (a plain-text prompt,
    e.g. :func:`cotshape.tasks.base.student_prompt` with ``plain``), tokenized as it is, with
    no special tokens added: the text carries its own BOS. ``SamplingParams.stop`` ends a
    completion at the first stop string (which is not part of the returned text)."""

    name: str = ""
    tokenizer = None  # set by backends that tokenize prompts themselves

    @property
    def dtype(self) -> str | None:
        """The dtype the loaded weights compute in (``bfloat16``, ...); None when the backend cannot say."""
        return None

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of a prompt: chat messages through the chat template (with the generation
        prompt), text as is."""
        tok = self.tokenizer
        if isinstance(prompt, str):
            return tok(prompt, add_special_tokens=False)["input_ids"]
        if not isinstance(prompt, list) or not all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
            raise ValueError(f"a prompt must be a string or a list of {{'role', 'content'}} messages, got {prompt!r:.200}")
        return tok(render_chat(tok, prompt), add_special_tokens=False)["input_ids"]

    def generate(
        self,
        prompts: list[Prompt],
        params: SamplingParams,
        progress: ProgressFn | None = None,
        seeds: list[int] | None = None,
        on_result: ResultFn | None = None,
    ) -> list[list[Completion]]:
        """Return, for each prompt, ``params.n`` completions (in order).

        ``progress``, if given, is called as ``progress(n_new_tokens)`` while generating so
        callers can drive a progress bar. ``seeds`` (one per prompt) see the module docstring.
        ``on_result(prompt_index, completions)``, if given, is called as soon as all ``n``
        completions of a prompt are done (so a caller can save them before the call returns).
        """
        raise NotImplementedError

    def close(self) -> None:
        """Free the model (GPU memory); the backend cannot generate afterwards."""
