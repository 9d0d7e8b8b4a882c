"""The host side of the sandbox: one :class:`_Worker` per fork server (start, send a job, restart
when it died) and :class:`SandboxPool`, warm servers shared by threads. docs/sandbox.md
describes the design."""

from __future__ import annotations

import json
import os
import struct
import sys
import threading
import time
from typing import Any

from cotshape.execution.sandbox.grading import ExecutionResult, grade, sandbox_error
from cotshape.execution.sandbox.isolation import (
    SERVER_FILE,
    SandboxUnavailable,
    bwrap_argv,
    probe_bwrap,
    resolve_mode,
    server_env,
)
from cotshape.execution.sandbox.server import read_exact, write_frame

#: bytes of stdout / stderr kept in the result (each)
CAPTURE_BYTES = 16_384
#: seconds the host waits beyond a program's timeout before declaring its worker dead
HOST_GRACE_S = 15.0
#: unprivileged uids for programs when running as root (one random uid per worker)
_UID_RANGE = (1_000_000_000, 2_000_000_000)


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
        server = [sys.executable, "-I", SERVER_FILE, "--serve"]
        if self.mode == "bwrap":
            probe = probe_bwrap()
            cfg["jobs_dir"] = "/tmp"
            argv = bwrap_argv(probe["path"], root, probe["size_flag"]) + server
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
            env=server_env(),
            cwd="/",
            start_new_session=True,
            close_fds=True,
        )
        hello = read_exact(self.proc.stdout.fileno(), 8, time.monotonic() + 60)
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
            write_frame(self.proc.stdin.fileno(), json.dumps(job).encode())
        except OSError:
            self.stop()
            return None
        deadline = time.monotonic() + job["timeout_s"] + HOST_GRACE_S
        fd = self.proc.stdout.fileno()
        head = read_exact(fd, 8, deadline)
        body = read_exact(fd, struct.unpack(">Q", head)[0], deadline) if head else None
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
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, env=server_env())
    except (OSError, subprocess.SubprocessError):
        pass


class SandboxPool:
    """Warm fork servers shared by threads; ``run`` borrows one, starting it when none is idle.

    Use as a context manager, or call :meth:`close`. The functions of :mod:`cotshape.execution.sandbox.api` share one
    pool per mode, closed at interpreter exit.
    """

    def __init__(self, mode: str | None = None):
        self.mode = resolve_mode(mode)
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

    def program_uids(self) -> set[int]:
        """The unprivileged uids this pool's programs run as (one per started worker; root only)."""
        with self._lock:
            return {w.uid for w in self._all if w.uid is not None}

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
                return sandbox_error(str(e), self.mode)
        finally:
            self._release(w)
        if reply is None:
            return sandbox_error("the sandbox worker died or stopped answering (restarted)", self.mode)
        return grade(reply, nonce, self.mode)


def _check_limits(**limits: float) -> None:
    for name, value in limits.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"sandbox limit {name}={value!r}: must be a positive number")
