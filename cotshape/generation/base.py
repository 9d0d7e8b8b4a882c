"""The one generation interface every backend implements.

Prompts in (chat messages or plain text), for each prompt ``n`` completions out, each with its
text, token count and finish reason. Backends: ``transformers`` (CPU and GPU) and ``vllm``
(GPU, optional extra ``gpu``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Prompt = list[dict[str, str]] | str  # chat messages or raw text
FinishReason = Literal["stop", "length"]


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
            raise ValueError(f"n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    text: str
    num_tokens: int
    finish_reason: FinishReason  # "stop": EOS or a stop string; "length": hit max_new_tokens


class Backend:
    """A loaded model that generates. Subclasses implement :meth:`generate`."""

    name: str = ""

    def generate(self, prompts: list[Prompt], params: SamplingParams, progress=None) -> list[list[Completion]]:
        """Return, for each prompt, ``params.n`` completions (in order).

        ``progress``, if given, is called as ``progress(n_new_tokens)`` while generating so
        callers can drive a progress bar.
        """
        raise NotImplementedError
