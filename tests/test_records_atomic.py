"""The one atomic writer (cotshape.core.records) and the one file md5 (cotshape.core.hashing)."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest

from cotshape.core import hashing
from cotshape.core.records import atomic_folder, atomic_path, write_text


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_path_renames_on_success_and_removes_the_temp_on_error(tmp_path):
    out = tmp_path / "sub" / "out.bin"
    with atomic_path(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.startswith(".out.bin.") and tmp.name.endswith(".tmp")
        tmp.write_bytes(b"new")
    assert out.read_bytes() == b"new" and _mode(out) == 0o600  # mkstemp's mode unless told otherwise
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert out.read_bytes() == b"new"
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.bin"]


def test_write_text_mode_and_newline(tmp_path):
    out = tmp_path / "a.txt"
    write_text(out, "x\r\ny\n", newline="", mode=0o644)
    assert out.read_bytes() == b"x\r\ny\n" and _mode(out) == 0o644


def test_atomic_folder_swaps_whole_and_keeps_the_old_one_on_error(tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    (tmp_path / ".m.leftover.tmp").mkdir()  # a killed run's temp folder
    with atomic_folder(out, mode=0o755) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"] and _mode(out) == 0o755
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temp, old or leftover folder
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_md5_file_reads_in_chunks(tmp_path):
    data = os.urandom(9 << 20)  # 9 MiB: more than two of its 4 MiB reads, the last one short
    (tmp_path / "f").write_bytes(data)
    assert hashing.md5_file(tmp_path / "f") == hashlib.md5(data).hexdigest()
    (tmp_path / "e").write_bytes(b"")
    assert hashing.md5_file(tmp_path / "e") == hashlib.md5(b"").hexdigest()
