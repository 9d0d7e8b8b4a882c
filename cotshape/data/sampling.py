"""The resumable, shardable teacher-sampling job (``cotshape sample``).

For every problem, ``k`` completions of the task's chat prompt. One output record per sample::

    {"id": "<problem_id>#<j>", "problem_id", "sample_index": j, "task", "prompt" (the chat
     messages), "completion", "num_tokens", "finish_reason", "teacher", "seed", "backend"}

(``backend``: the generation backend that drew the sample, ``base.backend`` in the pipeline.)

Determinism, precisely: sample ``j`` of problem ``p`` draws from its own generator seeded with
``derive_seed(derive_seed(seed, p), j)`` (stored as ``seed``), so a resumed or sharded run draws
the same random numbers as an uninterrupted one. The *samples* are the same only when they are
decoded in the same batches too: the same problems in the same order, the same batch size,
device, dtype and library versions (then a rerun reproduces them bit for bit). A resumed run,
another shard split or another ``sample.batch_size`` decodes each sample next to other rows, the
bf16 logits change in their last bits with the batch, and once one sampled token differs the
rest of that sample does too: ``bench/repro_sampling.py`` measures the share of samples that
stay identical (README, "Reproducibility"). Each sample is still a valid draw from the same
distribution, so the statistics do not change, but for bit-identical data rerun the whole
shard from scratch (delete ``OUT.partial``) with the same settings. What produced the samples
is recorded: in the pipeline, dvc.lock holds the sample stage's params (``sample.*`` with the
batch size, ``base.dtype``, ``base.device``, the teacher); the partial file's header holds the
same for a ``cotshape sample`` run while it works.

Resume: records are appended to ``OUT.partial`` (next to the output) as soon as each problem's
``k`` samples are done, flushed and fsynced. Its first line is a fingerprint of everything that
determines the samples (task, teacher, decoding settings, k, shard, the problems); a rerun with
the same arguments keeps the finished problems and samples only the rest; a different
fingerprint discards the partial file; a torn last line (kill -9 during a write) is dropped. At
the end the output is written atomically (problem order, then sample index) and the partial
file removed. One run at a time: :func:`partial_lock` holds ``OUT.partial.lock`` while a run
works, and a second run on the same output refuses with the first one's pid.

Sharding: shard ``I/N`` takes the problems whose index in the problem file satisfies
``index % N == I``; :func:`merge_shards` joins the shard outputs and checks that every
(problem, sample) is present exactly once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cotshape.core.errors import BusyError, InputError
from cotshape.generation.base import Backend, Completion, SamplingParams, derive_seed
from cotshape.core.records import RecordError, read_jsonl, write_jsonl
from cotshape.tasks.base import Problem, Task

log = logging.getLogger(__name__)

SAMPLE_FIELDS = ("id", "problem_id", "sample_index", "task", "prompt", "completion",
                 "num_tokens", "finish_reason", "teacher", "seed")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """Parse ``"I/N"`` (0 <= I < N) into ``(I, N)``; ``None`` stays ``None``."""
    if text is None:
        return None
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise InputError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    return check_shard((i, n))


def check_shard(shard: tuple[int, int] | None) -> tuple[int, int] | None:
    if shard is None:
        return None
    i, n = shard
    if n < 1 or not 0 <= i < n:
        raise InputError(f"shard must satisfy 0 <= I < N, got {i}/{n}")
    return (i, n)


def shard_problems(problems: list[Problem], shard: tuple[int, int] | None) -> list[Problem]:
    """Shard ``I/N``: the problems whose index ``idx`` satisfies ``idx % N == I``."""
    if shard is None:
        return list(problems)
    i, n = check_shard(shard)
    return [p for idx, p in enumerate(problems) if idx % n == i]


def problem_seed(seed: int, problem_id: str) -> int:
    return derive_seed(seed, problem_id)


def fingerprint(task: str, teacher: str, k: int, params: SamplingParams, shard: tuple[int, int] | None,
                problems: list[Problem], shots: int = 0) -> str:
    """Hash of everything that determines the samples (not the batch size or device)."""
    p = asdict(params)
    p.pop("n", None)
    h = hashlib.sha256()
    h.update(json.dumps({"task": task, "teacher": teacher, "k": k, "params": p, "shard": shard, "shots": shots},
                        sort_keys=True).encode())
    for prob in problems:
        h.update(json.dumps([prob["id"], prob["question"]]).encode())
    return h.hexdigest()[:32]


def partial_path(out_path: str | os.PathLike) -> Path:
    return Path(f"{out_path}.partial")


@contextlib.contextmanager
def partial_lock(out_path: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``OUT.partial`` for one sampling run.

    The lock is an ``fcntl.flock`` on ``OUT.partial.lock`` (holding the holder's pid); the kernel
    drops it when its holder exits, ``kill -9`` included, so a stale lock cannot block a rerun.
    A second run on the same output raises :class:`~cotshape.core.errors.BusyError` naming the
    first one's pid, instead of both appending to one partial file. The lock file is removed
    on release.
    """
    import fcntl

    part = partial_path(out_path)
    lock = Path(f"{part}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise BusyError(f"{part}: another sampling run (pid {holder}) is writing it; wait for it to "
                            "finish or stop it, then rerun to resume") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield part
    finally:
        lock.unlink(missing_ok=True)  # while still holding it: a waiter re-checks the inode
        os.close(fd)


def _load_partial(path: Path, fp: str) -> list[dict[str, Any]]:
    """Records of a previous run with the same fingerprint; drops a torn last line (rewriting
    the file without it, so that appends start on a fresh line)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    try:
        header = json.loads(lines[0])
    except (json.JSONDecodeError, UnicodeDecodeError):
        header = None
    if not isinstance(header, dict) or header.get("fingerprint") != fp:
        log.warning("%s: from a run with other arguments; starting over", path)
        path.unlink()
        return []
    recs, torn = [], False
    body = [ln for ln in lines[1:]]
    while body and not body[-1].strip():
        body.pop()
    for lineno, raw in enumerate(body, 2):
        try:
            rec = json.loads(raw)
            if not isinstance(rec, dict) or any(f not in rec for f in SAMPLE_FIELDS):
                raise ValueError("incomplete record")
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
            if lineno == len(body) + 1:  # only the last line may be torn (kill during a write)
                torn = True
                break
            raise RecordError(f"{path}:{lineno}: corrupt record in the partial file; delete it to start over") from None
        recs.append(rec)
    if torn or not lines[-1] == b"":
        _write_partial(path, fp, header.get("args", {}), recs)
    return recs


def _write_partial(path: Path, fp: str, args: dict[str, Any], recs: list[dict[str, Any]]) -> None:
    write_jsonl(path, [{"fingerprint": fp, "args": args}, *recs])


def _record(task: Task, problem: Problem, j: int, c: Completion, teacher: str, pseed: int,
            backend: str = "") -> dict[str, Any]:
    return {
        "id": f"{problem['id']}#{j}",
        "problem_id": problem["id"],
        "sample_index": j,
        "task": task.name,
        "prompt": task.chat_messages(problem),
        "completion": c.text,
        "num_tokens": c.num_tokens,
        "finish_reason": c.finish_reason,
        "teacher": teacher,
        "seed": derive_seed(pseed, j),
        "backend": backend,
    }


def run_sampling(
    task: Task,
    problems: list[Problem],
    backend: Backend,
    k: int,
    params: SamplingParams,
    out_path: str | os.PathLike,
    teacher: str,
    shard: tuple[int, int] | None = None,
    chunk_size: int = 256,
    show_progress: bool = True,
    shots: int = 0,
) -> int:
    """Sample ``k`` completions per problem (of shard ``shard``) into ``out_path``; resumes from
    ``OUT.partial``. ``chunk_size`` problems go to the backend per call (each problem is saved
    as soon as its samples are done, whatever the chunk size). ``shots`` worked exemplars of the
    task precede each problem in the teacher's prompt (:meth:`Task.teacher_messages`); the
    records keep the zero-shot prompt the student is trained on. Returns the number of records."""
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    if not problems:
        raise InputError("no problems to sample (the problem file is empty)")
    shard = check_shard(shard)
    mine = shard_problems(problems, shard)
    params = SamplingParams(**{**asdict(params), "n": k})
    task.teacher_messages(mine[0], shots) if mine else None  # a bad shots count fails before any work
    fp = fingerprint(task.name, teacher, k, params, shard, mine, shots)
    out_path = Path(out_path)
    with partial_lock(out_path) as part:
        return _run_locked(task, mine, backend, k, params, out_path, part, teacher, shard, fp, chunk_size,
                           show_progress, shots)


def _run_locked(task, mine, backend, k, params, out_path, part, teacher, shard, fp, chunk_size, show_progress,
                shots=0):
    """The body of :func:`run_sampling`, run while this process holds the lock on ``part``."""
    args = {"task": task.name, "teacher": teacher, "k": k, "shard": shard, "shots": shots, **asdict(params)}
    done = _load_partial(part, fp)
    have: dict[str, set[int]] = {}
    for r in done:
        have.setdefault(r["problem_id"], set()).add(r["sample_index"])
    todo = [p for p in mine if len(have.get(p["id"], ())) < k]
    if done:
        log.info("%s: resuming, %d of %d problems already sampled", part, len(mine) - len(todo), len(mine))
    if not part.exists():
        _write_partial(part, fp, args, [])

    if todo:
        _sample_into(task, todo, backend, k, params, part, teacher, have, chunk_size, show_progress, len(mine), shots)

    recs = _load_partial(part, fp)
    order = {p["id"]: i for i, p in enumerate(mine)}
    final: dict[tuple[str, int], dict[str, Any]] = {}
    for r in recs:
        final.setdefault((r["problem_id"], r["sample_index"]), r)  # first write wins
    missing = [(p["id"], j) for p in mine for j in range(k) if (p["id"], j) not in final]
    if missing:
        raise RuntimeError(f"{len(missing)} samples missing after sampling (first: {missing[0]}); rerun to resume")
    ordered = sorted((r for key, r in final.items() if key[0] in order and key[1] < k),
                     key=lambda r: (order[r["problem_id"]], r["sample_index"]))
    n = write_jsonl(out_path, ordered)
    part.unlink(missing_ok=True)
    return n


def _sample_into(task, todo, backend, k, params, part, teacher, have, chunk_size, show_progress, total, shots=0):
    from tqdm import tqdm

    bar = tqdm(total=total, initial=total - len(todo), desc=f"sample {task.name}", unit="problem",
               disable=not show_progress, dynamic_ncols=True)
    tokens, t0 = 0, time.perf_counter()

    def on_tokens(n: int) -> None:
        nonlocal tokens
        tokens += n
        bar.set_postfix(tok_s=f"{tokens / max(time.perf_counter() - t0, 1e-9):.0f}", refresh=False)

    with open(part, "a", encoding="utf-8") as fh:
        for start in range(0, len(todo), chunk_size):
            chunk = todo[start:start + chunk_size]
            seeds = [problem_seed(params.seed, p["id"]) for p in chunk]

            def on_result(i: int, comps: list[Completion], chunk=chunk, seeds=seeds) -> None:
                p = chunk[i]
                lines = [
                    json.dumps(_record(task, p, j, c, teacher, seeds[i], getattr(backend, "name", "")), ensure_ascii=False)
                    for j, c in enumerate(comps)
                    if j not in have.get(p["id"], ())
                ]
                # one write per problem, then fsync: a kill can tear at most this last line
                fh.write("".join(line + "\n" for line in lines))
                fh.flush()
                os.fsync(fh.fileno())
                bar.update(1)

            backend.generate([task.teacher_messages(p, shots) for p in chunk], params, progress=on_tokens,
                             seeds=seeds, on_result=on_result)
    bar.close()


def merge_shards(paths: list[str | os.PathLike], out: str | os.PathLike, problems: list[Problem] | None = None,
                 k: int | None = None) -> int:
    """Join shard outputs into ``out`` (atomically). Every (problem, sample) must be present
    exactly once; with ``problems`` and ``k`` given, every problem must have samples 0..k-1,
    and the output follows the problem order. Returns the number of records."""
    if not paths:
        raise InputError("merge_shards: no shard files given")
    seen: dict[tuple[str, int], str] = {}
    recs = []
    for path in paths:
        for lineno, rec in enumerate(read_jsonl(path, required=SAMPLE_FIELDS), 1):
            if not isinstance(rec["problem_id"], str) or isinstance(rec["sample_index"], bool) \
                    or not isinstance(rec["sample_index"], int):
                raise RecordError(f"{path}:{lineno}: problem_id must be a string and sample_index an integer, "
                                  f"got {rec['problem_id']!r:.80} and {rec['sample_index']!r:.80}")
            key = (rec["problem_id"], rec["sample_index"])
            if key in seen:
                raise RecordError(f"{path}:{lineno}: sample {key[0]}#{key[1]} already in {seen[key]}")
            seen[key] = f"{path}:{lineno}"
            recs.append(rec)
    if problems is not None:
        order = {p["id"]: i for i, p in enumerate(problems)}
        unknown = sorted({r["problem_id"] for r in recs} - set(order))
        if unknown:
            raise RecordError(f"{seen[(unknown[0], next(r['sample_index'] for r in recs if r['problem_id'] == unknown[0]))]}: "
                              f"problem {unknown[0]!r} is not in the problem file")
        if k is not None:
            missing = [f"{p['id']}#{j}" for p in problems for j in range(k) if (p["id"], j) not in seen]
            if missing:
                raise RecordError(f"{len(missing)} samples missing from the shards (first: {missing[0]})")
        recs.sort(key=lambda r: (order[r["problem_id"]], r["sample_index"]))
    else:
        recs.sort(key=lambda r: (r["problem_id"], r["sample_index"]))
    return write_jsonl(out, recs)


def read_samples(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a sample file, checking every record has the sample fields."""
    return read_jsonl(path, required=SAMPLE_FIELDS)


__all__ = ["SAMPLE_FIELDS", "fingerprint", "merge_shards", "parse_shard", "partial_path",
           "read_samples", "run_sampling", "shard_problems"]
