"""cotshape.core.allocator: which jemalloc a stage preloads, the environment it re-executes with,
and (where a jemalloc is installed) that a stage started as a program really runs on it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cotshape.core import allocator
from cotshape.core.errors import StageError


def test_library_search_order_and_switches(tmp_path):
    env_lib = tmp_path / "lib" / "jemalloc" / "libjemalloc.so.2"
    env_lib.parent.mkdir(parents=True)
    env_lib.write_bytes(b"")
    explicit = tmp_path / "mine.so"
    explicit.write_bytes(b"")
    if sys.platform.startswith("linux"):
        assert allocator.jemalloc_library({}, prefix=str(tmp_path)) == str(env_lib)  # the environment's copy first
        assert allocator.jemalloc_library({"COTSHAPE_JEMALLOC": str(explicit)}, prefix=str(tmp_path)) == str(explicit)
    assert allocator.jemalloc_library({"COTSHAPE_ALLOCATOR": "glibc"}, prefix=str(tmp_path)) is None


def test_a_missing_explicit_library_is_one_clear_error(tmp_path):
    if not sys.platform.startswith("linux"):
        pytest.skip("jemalloc is preloaded on Linux only")
    with pytest.raises(StageError, match="COTSHAPE_JEMALLOC=.*no such file"):
        allocator.jemalloc_library({"COTSHAPE_JEMALLOC": str(tmp_path / "nope.so")})


def test_environ_puts_jemalloc_first_once_and_keeps_a_users_conf():
    env = allocator.jemalloc_environ({"LD_PRELOAD": "/x/other.so /j.so", "PATH": "/bin"}, "/j.so")
    assert env["LD_PRELOAD"] == "/j.so /x/other.so"
    assert env["MALLOC_CONF"] == allocator.JEMALLOC_CONF and env[allocator.LOADED_ENV] == "/j.so"
    assert env["PATH"] == "/bin"
    assert allocator.jemalloc_environ({"MALLOC_CONF": "narenas:1"}, "/j.so")["MALLOC_CONF"] == "narenas:1"


def _stage_script(tmp_path: Path) -> Path:
    script = tmp_path / "stage_probe.py"
    script.write_text(textwrap.dedent("""
        import os, sys
        from cotshape.core.allocator import active_allocator
        from cotshape.pipeline.stage import stage_main

        @stage_main
        def main(argv=None):
            print(active_allocator(), os.environ.get("COTSHAPE_JEMALLOC_LOADED", "-"), sys.argv[1:])

        raise SystemExit(main())
    """))
    return script


def _run(script: Path, **env) -> str:
    full = {**os.environ, **env}
    full.pop(allocator.LOADED_ENV, None)
    out = subprocess.run([sys.executable, str(script), "--flag", "x"], env=full, capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    return out.stdout.strip()


def test_a_stage_program_reexecutes_itself_on_jemalloc(tmp_path):
    library = allocator.jemalloc_library(prefix=sys.prefix)
    if library is None:
        pytest.skip("no jemalloc installed here (scripts/setup.sh unpacks Debian's where apt-get exists)")
    script = _stage_script(tmp_path)
    assert _run(script) == f"jemalloc {library} ['--flag', 'x']"  # the same arguments, jemalloc mapped
    assert _run(script, COTSHAPE_ALLOCATOR="glibc") == "glibc - ['--flag', 'x']"


def test_a_stage_called_in_process_is_never_reexecuted(monkeypatch):
    """Tests (and the CLI) call a stage's main(argv) in their own process: no exec."""
    from cotshape.pipeline.stage import stage_main

    monkeypatch.setattr(os, "execve", lambda *a: pytest.fail("execve called"))
    monkeypatch.setattr(allocator, "jemalloc_library", lambda *a, **k: "/some/libjemalloc.so.2")
    assert stage_main(lambda argv: None)(["--x"]) == 0
