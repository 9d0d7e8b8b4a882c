"""What happened to one program: :class:`ExecutionResult`, and :func:`grade`, which turns the
fork server's raw observations into it. Only the run's nonce, written by the harness after the
last part, proves a pass; exit codes and output are never trusted."""

from __future__ import annotations

import json
import signal
from dataclasses import asdict, dataclass
from typing import Any


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


def sandbox_error(reason: str, mode: str) -> ExecutionResult:
    """The result of a run the sandbox itself could not carry out."""
    return ExecutionResult(False, "sandbox_error", reason, "", "", None, 0.0, False, False, False, mode)


def grade(reply: dict[str, Any], nonce: str, mode: str) -> ExecutionResult:
    """Turn the server's raw observations into a verdict; only the nonce proves success."""
    if reply.get("server_error"):
        return sandbox_error(reply["server_error"], mode)
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
