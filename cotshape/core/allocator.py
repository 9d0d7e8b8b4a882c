"""The process's memory allocator on CPU: jemalloc where it is installed, else glibc kept from
handing freed memory back to the kernel.

On CPU, torch allocates every tensor with ``malloc``. By default glibc serves a large block as a
fresh ``mmap`` and returns it with ``munmap`` when freed, so the next tensor of that size faults
its pages in again (the kernel zero-fills each 4 KiB page). Training and decoding allocate and
free the same large tensors every step (activations, logits over a 262k-token vocabulary), and on
the 2-core dev machines a page fault is slow enough that this showed as a quarter of the time
(measured below). :func:`reuse_freed_memory` makes glibc serve those blocks from its heap and keep
freed memory for the next one. Even so, blocks of changing sizes fragment glibc's heap, which
then grows into fresh pages; jemalloc's size classes reuse them. A stage script started as a
program re-executes itself once with jemalloc preloaded (:func:`exec_with_jemalloc`, called by
:func:`cotshape.pipeline.stage.stage_main`), as Intel's PyTorch CPU launcher does. Neither changes
a result: only where the bytes live.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

#: where :func:`jemalloc_library` looks, after ``$COTSHAPE_JEMALLOC``: the copy scripts/setup.sh
#: unpacks into the environment (Debian's libjemalloc2), then the system's (Debian/Ubuntu, Fedora)
JEMALLOC_CANDIDATES = (
    "{prefix}/lib/jemalloc/libjemalloc.so.2",
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/lib64/libjemalloc.so.2",
)
#: jemalloc keeps freed pages for reuse (never purges them), as :func:`reuse_freed_memory` makes glibc
JEMALLOC_CONF = "dirty_decay_ms:-1,muzzy_decay_ms:-1"
#: set in the re-executed process: the library it preloads (or asked to preload)
LOADED_ENV = "COTSHAPE_JEMALLOC_LOADED"


def jemalloc_library(env: Mapping[str, str] | None = None, prefix: str | None = None) -> str | None:
    """The jemalloc shared library to preload, or None: ``$COTSHAPE_ALLOCATOR=glibc`` (keep glibc),
    not Linux, or none installed. ``$COTSHAPE_JEMALLOC`` names one explicitly (it must exist);
    else the first of :data:`JEMALLOC_CANDIDATES` that exists (``prefix``: ``sys.prefix``, the
    environment)."""
    env = os.environ if env is None else env
    if env.get("COTSHAPE_ALLOCATOR", "auto") == "glibc" or not sys.platform.startswith("linux"):
        return None
    explicit = env.get("COTSHAPE_JEMALLOC")
    if explicit:
        if not Path(explicit).is_file():
            from cotshape.core.errors import StageError

            raise StageError(f"COTSHAPE_JEMALLOC={explicit}: no such file (unset it to look in the usual places, "
                             "or set COTSHAPE_ALLOCATOR=glibc)")
        return explicit
    prefix = sys.prefix if prefix is None else prefix
    for pattern in JEMALLOC_CANDIDATES:
        path = pattern.format(prefix=prefix)
        if Path(path).is_file():
            return path
    return None


def jemalloc_environ(env: Mapping[str, str], library: str) -> dict[str, str]:
    """``env`` for a process that preloads ``library``: first in ``LD_PRELOAD``, jemalloc's
    :data:`JEMALLOC_CONF` unless ``MALLOC_CONF`` is set, and :data:`LOADED_ENV`."""
    out = dict(env)
    preload = [p for p in out.get("LD_PRELOAD", "").replace(":", " ").split() if p != library]
    out["LD_PRELOAD"] = " ".join([library, *preload])
    out.setdefault("MALLOC_CONF", JEMALLOC_CONF)
    out[LOADED_ENV] = library
    return out


def exec_with_jemalloc() -> None:
    """Replace this process by itself with jemalloc preloaded (the same interpreter and command
    line, ``sys.orig_argv``), once: nothing when it already was (:data:`LOADED_ENV` set), when
    :func:`jemalloc_library` finds none, or when torch is already imported (too late to be
    cheap: a program calls this first). A stage process costs one more interpreter start
    (~0.1 s)."""
    if os.environ.get(LOADED_ENV) or "torch" in sys.modules:
        return
    library = jemalloc_library()
    if library is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], jemalloc_environ(os.environ, library))


def active_allocator() -> str:
    """``jemalloc`` when this process has libjemalloc mapped, else ``glibc`` (Linux) or ``system``."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return "jemalloc" if "libjemalloc" in maps else "glibc"

# glibc's malloc.h
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def reuse_freed_memory() -> bool:
    """Make glibc serve large allocations from the heap and keep freed memory for reuse (no
    ``mmap``/``munmap`` per tensor, no trimming), as ``MALLOC_MMAP_MAX_=0`` would from the start.

    Measured on 2 cores: SFT (bench_sft) full fine-tuning +17 % tokens/s, LoRA +9 %; greedy
    decoding of Gemma-3-270M on 128 test prompts (prefill and 48 new tokens, transformers
    backend) 22.5 / 20.3 s -> 16.4 / 15.7 s. Called by training (:func:`cotshape.sft.train.train_sft`)
    and by the transformers backend on CPU. Returns False where it does not apply (not glibc).
    The process keeps its peak memory until it exits (a stage process exits after its stage)."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_TOP_PAD, 1 << 28))
