"""The fork server: the program that runs inside the sandbox and forks one child per job.

Started as ``python -I server.py --serve CONFIG`` (inside bubblewrap when it works), it must
import nothing but the standard library: the file runs alone, its folder is not on ``sys.path``
(so programs cannot import the sandbox's modules), and the package is never loaded into the
memory the programs share. docs/sandbox.md describes what it enforces.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import time
from typing import Any

#: the result pipe's fd number in the child
_RES_FD = 200
#: the programs' PATH (and the server's)
CHILD_PATH = "/usr/local/bin:/usr/bin:/bin"
#: imported by the server before forking: faster programs, and importable in rlimit mode as root
#: even when the interpreter's files are not readable by the programs' uid
_PREIMPORT = (
    "abc array ast bisect calendar cmath collections collections.abc contextlib copy csv "
    "dataclasses datetime decimal enum fractions functools glob hashlib heapq io itertools json "
    "math numbers operator pathlib pickle queue random re shutil signal socket statistics string "
    "struct subprocess tempfile textwrap threading time traceback typing unicodedata uuid "
    "zlib ctypes"
).split()

# seccomp: AUDIT_ARCH and syscall numbers of socket() and io_uring_setup()
SECCOMP_ARCH = {"x86_64": (0xC000003E, 41, 425), "aarch64": (0xC00000B7, 198, 425)}


# --------------------------------------------------------------------------------------------
# The frame protocol (both ends): an 8-byte big-endian length, then a JSON body
# --------------------------------------------------------------------------------------------


def write_frame(fd: int, payload: bytes) -> None:
    data = struct.pack(">Q", len(payload)) + payload
    while data:
        n = os.write(fd, data)
        data = data[n:]


def read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
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


# --------------------------------------------------------------------------------------------
# seccomp and prctl
# --------------------------------------------------------------------------------------------


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

    arch = SECCOMP_ARCH.get(os.uname().machine)
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


# --------------------------------------------------------------------------------------------
# One program: the confined child
# --------------------------------------------------------------------------------------------


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
        env = {"PATH": CHILD_PATH, "HOME": jobdir, "TMPDIR": jobdir, "LANG": "C.UTF-8"}
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


# --------------------------------------------------------------------------------------------
# After a program: kill what it left, remove its folder
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# The job loop
# --------------------------------------------------------------------------------------------


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
        head = read_exact(0, 8, None)
        if head is None:
            return
        body = read_exact(0, struct.unpack(">Q", head)[0], None)
        if body is None:
            return
        try:
            reply = _run_job(json.loads(body), cfg)
        except Exception as e:  # noqa: BLE001 - report, never die silently
            import traceback

            reply = {"server_error": f"sandbox server: {type(e).__name__}: {e}",
                     "traceback": traceback.format_exc()[-2000:], "dirty": True}
        write_frame(1, json.dumps(reply).encode())


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--serve":
    _serve(json.loads(sys.argv[2]))
