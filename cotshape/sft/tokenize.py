"""Training records to token ids: each record checked (:func:`to_conversational`), its student
prompt chosen by ``base.prompt_format`` (:func:`record_prompts`, :func:`prompt_format_kwargs`) and
tokenized exactly as TRL prepares a prompt/completion example (:func:`tokenize_example`,
:func:`tokenize_records`); SFT and closeness both tokenize here, so they use the very same masks."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from cotshape.core.errors import RecordError


def to_conversational(record: dict[str, Any], index: int = 0) -> tuple[list[dict[str, str]], str]:
    """Validate a training record and return ``(prompt messages, completion text)``."""
    where = f"record {index}" + (f" (id {record['id']!r})" if isinstance(record, dict) and "id" in record else "")
    if not isinstance(record, dict):
        raise RecordError(f"{where}: expected a dict, got {type(record).__name__}")
    prompt, completion = record.get("prompt"), record.get("completion")
    if not isinstance(prompt, list) or not prompt or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in prompt
    ):
        raise RecordError(f"{where}: 'prompt' must be a non-empty list of {{'role', 'content'}} messages")
    if not isinstance(completion, str) or not completion:
        raise RecordError(f"{where}: 'completion' must be a non-empty string")
    return prompt, completion


def tokenize_example(tokenizer, prompt: list[dict[str, str]] | str, completion: str,
                     max_length: int | None = None) -> dict[str, list[int]]:
    """Token ids and completion mask of one example, exactly as TRL's ``SFTTrainer`` prepares a
    conversational prompt/completion example: the prompt rendered with the generation prompt, the
    full conversation with the completion as the assistant turn (so the end-of-turn token is
    trained), the completion starting where the two token sequences diverge. Cut to
    ``max_length`` from the end (TRL's ``keep_start``).

    A text ``prompt`` (``base.prompt_format: plain``, the text of
    :func:`cotshape.tasks.base.student_prompt`) is tokenized as it is (no special tokens added:
    it carries its own BOS), exactly the ids evaluation decodes from; the completion is
    :data:`~cotshape.tasks.base.PLAIN_SEPARATOR` + completion + EOS (TRL appends EOS to a
    non-conversational completion), tokenized on its own so that no token merges across the
    boundary and the trained context is the evaluated one."""
    if isinstance(prompt, str):
        from cotshape.tasks.base import PLAIN_SEPARATOR

        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        text = completion if completion.startswith(("\n", " ")) else PLAIN_SEPARATOR + completion
        completion_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            completion_ids = [*completion_ids, tokenizer.eos_token_id]
        ids, mask = list(prompt_ids) + completion_ids, [0] * len(prompt_ids) + [1] * len(completion_ids)
        if max_length is not None:
            ids, mask = ids[:max_length], mask[:max_length]
        return {"input_ids": ids, "completion_mask": mask}
    prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
    ids = _chat_ids(tokenizer, prompt + [{"role": "assistant", "content": completion}])
    n = 0
    for a, b in zip(prompt_ids, ids, strict=False):
        if a != b:
            break
        n += 1
    mask = [0] * n + [1] * (len(ids) - n)
    if max_length is not None:
        ids, mask = ids[:max_length], mask[:max_length]
    return {"input_ids": ids, "completion_mask": mask}


def _chat_ids(tokenizer, messages: list[dict[str, str]], **kw: Any) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:
        from cotshape.core.errors import InputError
        from cotshape.generation.base import NO_CHAT_TEMPLATE

        raise InputError(NO_CHAT_TEMPLATE)
    out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kw)
    return list(out["input_ids"])


def record_prompts(tokenizer, records: Sequence[dict[str, Any]], prompt_format: str = "chat", task=None,
                   problems: dict[str, Any] | None = None) -> list[str] | None:
    """The student prompt text of each training record under ``base.prompt_format``: None for
    ``chat`` (the record's own messages are rendered with the chat template), for ``plain``
    :func:`cotshape.tasks.base.student_prompt` of the record's problem (``problem_id`` looked up
    in ``problems``, the prepared training problems: a record does not hold its problem)."""
    from cotshape.tasks.base import check_prompt_format, student_prompt

    if check_prompt_format(prompt_format) == "chat":
        return None
    if task is None or problems is None:
        raise ValueError("base.prompt_format: plain needs the task and its problems (stage option --problems)")
    out = []
    for i, rec in enumerate(records):
        pid = rec.get("problem_id") if isinstance(rec, dict) else None
        if pid not in problems:
            raise RecordError(f"record {i}: problem_id {pid!r} is not among the task's prepared problems")
        out.append(student_prompt(task, problems[pid], "plain", tokenizer))
    return out


def prompt_format_kwargs(prompt_format: str, task_name: str, problems_path: str | os.PathLike | None) -> dict[str, Any]:
    """The ``prompt_format``/``task``/``problems`` keywords of :func:`train_sft` and
    :func:`cotshape.sft.closeness.completion_loss` for a stage: ``plain`` needs the prepared problems
    file (stage option ``--problems``), ``chat`` nothing more."""
    from cotshape.tasks.base import check_prompt_format

    if check_prompt_format(prompt_format) == "chat":
        return {"prompt_format": "chat"}
    if not problems_path:
        from cotshape.core.errors import InputError

        raise InputError("base.prompt_format: plain builds each student prompt from the record's problem: "
                         "pass the task's prepared problems with --problems (dvc.yaml)")
    from cotshape.core.records import read_problems
    from cotshape.tasks import get_task

    return {"prompt_format": "plain", "task": get_task(task_name),
            "problems": {x["id"]: x for x in read_problems(problems_path)}}


def tokenize_records(tokenizer, records: Sequence[dict[str, Any]], max_length: int | None,
                     prompts: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Tokenize training records; examples whose completion was cut away entirely are dropped
    (they carry no loss), as TRL does. ``prompts`` (:func:`record_prompts` with ``plain``)
    replaces each record's chat messages by its plain prompt text."""
    pairs = [to_conversational(rec, i) for i, rec in enumerate(records)]  # all checked before any work
    if prompts is not None:
        if len(prompts) != len(pairs):
            raise ValueError(f"tokenize_records: {len(prompts)} prompts for {len(pairs)} records")
        pairs = [(text, completion) for text, (_, completion) in zip(prompts, pairs, strict=True)]
    out = []
    for prompt, completion in pairs:
        ex = tokenize_example(tokenizer, prompt, completion, max_length)
        if any(ex["completion_mask"]):
            out.append(ex)
    return out
