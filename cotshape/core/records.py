"""Record schema and file I/O shared by every stage.

A *problem* is one dict with exactly these keys (JSONL, one per line)::

    {"id": str, "task": str, "question": str, "answer": str,
     "solution": str, "tests": list[str], "meta": dict}

``answer`` is the gold final answer as a string, ``solution`` the human-written solution (the
paper's H), ``tests`` a list of assert statements for code tasks (empty otherwise) and ``meta``
task specifics (Countdown: ``numbers``, ``target``; MBPP: ``test_setup_code``, ``entry_point``).

Every reader reports a malformed file as ``path:line: what is wrong`` (a :class:`RecordError`),
and every writer writes to a temporary file in the same folder and renames it into place, so a
killed process never leaves a half-written output behind. Files ending in ``.parquet`` are read
and written with pyarrow; everything else is JSONL.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cotshape.core.errors import RecordError

PROBLEM_FIELDS: dict[str, type | tuple[type, ...]] = {
    "id": str,
    "task": str,
    "question": str,
    "answer": str,
    "solution": str,
    "tests": list,
    "meta": dict,
}


def make_problem(
    id: str,
    task: str,
    question: str,
    answer: str,
    solution: str,
    tests: list[str] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Build a problem record (the one schema used everywhere) and validate it."""
    rec = {
        "id": str(id),
        "task": task,
        "question": question,
        "answer": str(answer),
        "solution": solution,
        "tests": list(tests or []),
        "meta": dict(meta or {}),
    }
    problem = validate_problem(rec)
    if problem is not None:
        raise RecordError(f"<problem {id}>: {problem}")
    return rec


def validate_problem(rec: Any) -> str | None:
    """Return what is wrong with a problem record, or None when it is valid."""
    if not isinstance(rec, dict):
        return f"expected a JSON object, got {type(rec).__name__}"
    missing = [k for k in PROBLEM_FIELDS if k not in rec]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    extra = sorted(set(rec) - set(PROBLEM_FIELDS))
    if extra:
        return f"unknown field(s) {', '.join(extra)} (allowed: {', '.join(PROBLEM_FIELDS)})"
    for key, typ in PROBLEM_FIELDS.items():
        if not isinstance(rec[key], typ):
            return f"field {key!r} must be {typ.__name__}, got {type(rec[key]).__name__}"
    if not rec["id"]:
        return "field 'id' is empty"
    if not all(isinstance(t, str) for t in rec["tests"]):
        return "field 'tests' must be a list of strings"
    return None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line; bad JSON, text that is not UTF-8
    and values nested too deeply to parse are a RecordError naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise RecordError(f"{path}: file not found")
    with open(path, "rb") as fh:  # bytes: a decode error is reported with its line
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RecordError(f"{path}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column "
                                  f"{e.start + 1})") from None
            if not line.strip():
                continue
            yield lineno, _loads(line, f"{path}:{lineno}")


def _loads(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
    except RecursionError:
        raise RecordError(f"{where}: JSON nested too deeply to read") from None


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Read a JSONL file of objects; each must hold the ``required`` keys."""
    required = tuple(required)
    out = []
    if str(path).endswith(".parquet"):
        return _read_parquet(path, required)
    for lineno, rec in iter_jsonl(path):
        if not isinstance(rec, dict):
            raise RecordError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
        missing = [k for k in required if k not in rec]
        if missing:
            raise RecordError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        out.append(rec)
    return out


def _read_parquet(path: str | os.PathLike, required: tuple[str, ...]) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if not Path(path).exists():
        raise RecordError(f"{path}: file not found")
    rows = pq.read_table(path).to_pylist()
    for i, rec in enumerate(rows, 1):
        missing = [k for k in required if k not in rec]
        if missing:
            raise RecordError(f"{path}:{i}: missing field(s) {', '.join(missing)}")
    return rows


def read_problems(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read and validate a problem file; duplicate ids are an error."""
    problems = []
    seen: dict[str, int] = {}
    rows = (
        enumerate(_read_parquet(path, ()), 1)
        if str(path).endswith(".parquet")
        else iter_jsonl(path)
    )
    for lineno, rec in rows:
        err = validate_problem(rec)
        if err:
            raise RecordError(f"{path}:{lineno}: {err}")
        if rec["id"] in seen:
            raise RecordError(f"{path}:{lineno}: duplicate id {rec['id']!r} (first on line {seen[rec['id']]})")
        seen[rec["id"]] = lineno
        problems.append(rec)
    return problems


def _atomic_target(path: str | os.PathLike) -> tuple[Path, int, str]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return path, fd, tmp


@contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Write a file atomically through any writer: ``with atomic_path(out) as tmp:`` write to
    ``tmp`` (an empty file ``.OUT.*.tmp`` beside ``out``, created private by ``mkstemp``); on
    success it is renamed onto ``out`` (after ``chmod`` to ``mode`` when given), on any error it
    is removed and ``out`` is left as it was. The one atomic file write every writer uses."""
    path, fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        yield Path(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Write records atomically (temp file + rename); returns the number written."""
    if str(path).endswith(".parquet"):
        return _write_parquet(path, list(records))
    n = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
    return n


def _write_parquet(path: str | os.PathLike, records: list[dict[str, Any]]) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(records), tmp)
    return len(records)


def write_text(path: str | os.PathLike, text: str, *, newline: str | None = None,
               mode: int | None = None) -> None:
    """Write a text file atomically (``newline`` as for :func:`open`; ``mode``: the file's
    permission bits, else ``mkstemp``'s private ``0o600``)."""
    with atomic_path(path, mode=mode) as tmp:
        with open(tmp, "w", encoding="utf-8", newline=newline) as fh:
            fh.write(text)


@contextmanager
def atomic_folder(folder: str | os.PathLike, *, mode: int | None = None) -> Iterator[Path]:
    """Build a folder aside and swap it in whole: ``with atomic_folder(out) as tmp:`` write into
    ``tmp`` (``.OUT.*.tmp`` beside ``out``, private as ``mkdtemp`` makes it unless ``mode`` is given);
    on success the old ``out`` is moved aside, ``tmp`` renamed into its place and the old one
    removed, on any error ``tmp`` is removed and ``out`` is left as it was. Leftovers of a killed
    run (``.OUT.*``) are removed first, so one writer per folder is assumed (DVC runs one stage
    per out)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(f".{folder.name}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    old = None
    try:
        if mode is not None:
            os.chmod(tmp, mode)
        yield tmp
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{os.getpid()}"
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not folder.exists():
            os.replace(old, folder)  # the swap failed half-way: put the old folder back
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write a JSON document atomically (sorted keys, indented: diff-friendly metrics)."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def read_utf8(path: str | os.PathLike, error: type[Exception] = RecordError) -> str:
    """The text of a UTF-8 file; a missing file or a byte that is not UTF-8 is one ``error``
    naming the file (and the line of the bad byte)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{path}: file not found")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text") from None


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON document; a malformed one is a RecordError naming the file (and line)."""
    path = Path(path)
    text = read_utf8(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except RecursionError:
        raise RecordError(f"{path}: JSON nested too deeply to read") from None


def read_ids(path: str | os.PathLike) -> list[str]:
    """The ``problem_ids`` list of an ids file (select writes ``data/sets/TASK/ids.json``: the
    problems every training set is compared on)."""
    doc = read_json(path)
    ids = doc.get("problem_ids") if isinstance(doc, dict) else None
    if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
        raise RecordError(f"{path}: expected {{\"problem_ids\": [string, ...]}}")
    return ids


def restrict_to_ids(records: list[dict[str, Any]], ids: Iterable[str]) -> list[dict[str, Any]]:
    """The records whose ``problem_id`` is in ``ids``, in their original order."""
    keep = set(ids)
    return [r for r in records if r.get("problem_id") in keep]


def training_record(task_name: str, set_name: str, problem_id: str, prompt: list[dict[str, str]],
                    completion: str, **extra: Any) -> dict[str, Any]:
    """One record of a training set (the format SFT and closeness read)."""
    rec = {
        "id": f"{task_name}-{set_name}-{problem_id}",
        "problem_id": problem_id,
        "task": task_name,
        "set": set_name,
        "prompt": prompt,
        "completion": completion,
    }
    rec.update(extra)
    return rec
