"""The code sandbox against hostile and honest programs, in every isolation mode this machine has.

Each hostile program must be graded as not passing (or be contained when passing is
legitimate), leave the host unharmed and leave no process running.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
import uuid

import pytest

from cotshape.execution.sandbox import isolation
from cotshape.execution.sandbox.api import (
    ExecutionResult,
    isolation_report,
    run_program,
    run_tests,
    run_tests_many,
    shared_pool,
)
from cotshape.execution.sandbox.host import CAPTURE_BYTES
from cotshape.execution.sandbox.isolation import (
    MODE_ENV,
    SandboxUnavailable,
    SandboxWarning,
    reset_probe_cache,
    resolve_mode,
)

_REPORT = isolation_report()
_MODES = [
    pytest.param("bwrap", marks=pytest.mark.skipif(
        not _REPORT["bwrap_works"], reason=f"bubblewrap cannot run here: {_REPORT['bwrap_error']}")),
    "rlimit",
]
_ROOT = os.geteuid() == 0


@pytest.fixture(params=_MODES)
def mode(request) -> str:
    return request.param


def _uid_processes(uids: set[int]) -> list[str]:
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                status = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields["Uid"].split()[0]) in uids and not fields["State"].strip().startswith("Z"):
            out.append(f"{pid} {fields['Name'].strip()}")
    return out


def assert_nothing_left(mode: str) -> None:
    """No process of the programs' uids survives the run (root only: otherwise they share ours)."""
    if not _ROOT:
        return
    uids = shared_pool(mode).program_uids()
    deadline = time.monotonic() + 2
    while (left := _uid_processes(uids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left == []


def _cmdline_processes(marker: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return found


# ---- honest programs ---------------------------------------------------------------------------


def test_honest_program_with_stdlib_scratch_file_and_100mb_passes(mode):
    src = (
        "import collections, json, re, math, os\n"
        "with open('scratch.txt', 'w') as f:\n"
        "    f.write(json.dumps({'a': 1}))\n"
        "assert json.load(open('scratch.txt')) == {'a': 1}\n"
        "buf = bytearray(100 * 1024 * 1024)\n"
        "assert len(buf) == 100 * 1024 * 1024\n"
        "print(collections.Counter('abca').most_common(1), math.isqrt(17), re.sub('a', 'b', 'aa'))\n"
    )
    r = run_program(src, timeout_s=20, mode=mode)
    assert r.passed, (r.status, r.reason, r.stderr)
    assert r.status == "passed"
    assert r.stdout == "[('a', 2)] 4 bb\n"
    assert r.mode == mode


def test_run_tests_passes_correct_code_and_names_the_failing_test(mode):
    code = "def add(a, b):\n    return a + b\n"
    ok = run_tests(code, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], mode=mode)
    assert ok.passed and ok.status == "passed"
    bad = run_tests("def add(a, b):\n    return a - b\n", ["assert add(0, 0) == 0", "assert add(1, 2) == 3"],
                    mode=mode)
    assert not bad.passed
    assert bad.status == "failed"
    assert "test 2" in bad.reason


def test_setup_code_runs_after_the_code_and_before_the_tests(mode):
    r = run_tests("def check(f):\n    pass\n", ["check(1)"],
                  setup_code="def check(f):\n    assert f == 2\n", mode=mode)
    assert not r.passed and r.status == "failed"


def test_syntax_error_in_code_is_an_error(mode):
    r = run_tests("def f(:\n", ["assert f() == 1"], mode=mode)
    assert not r.passed and r.status == "error" and "SyntaxError" in r.reason


def test_program_folder_is_removed_afterwards():
    r = run_program("import os\nprint(os.getcwd())\nopen('f', 'w').write('x')\n", mode="rlimit")
    assert r.passed
    assert not os.path.exists(r.stdout.strip())


# ---- exit-0 tricks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "code",
    [
        "import sys\nsys.exit(0)\n",
        "import os\nos._exit(0)\n",
        "import os\nprint('PASSED')\nprint('all tests passed')\nos._exit(0)\n",
        "import atexit, os\natexit.register(lambda: print('OK'))\nraise SystemExit(0)\n",
        "import os\nfor fd in range(3, 1024):\n    try:\n        os.write(fd, b'0' * 64)\n"
        "    except OSError:\n        pass\nos._exit(0)\n",
        "import os\nif os.fork():\n    os._exit(0)\n",  # the fork runs the tests, its parent exits 0
        "import signal, os\nos.kill(os.getpid(), signal.SIGKILL)\n",
    ],
    ids=["sys.exit", "os._exit", "success-words", "atexit", "write-every-fd", "fork-and-exit", "sigkill-self"],
)
def test_exiting_before_the_tests_is_not_a_pass(mode, code):
    r = run_tests(code, ["assert False"], mode=mode)
    assert not r.passed
    assert r.status in ("exited", "error")
    assert_nothing_left(mode)


def test_systemexit_raised_inside_an_assert_is_not_a_pass(mode):
    r = run_tests("def f():\n    raise SystemExit(0)\n", ["assert f() == 1"], mode=mode)
    assert not r.passed and r.status == "exited"


def test_replacing_builtins_assertionerror_does_not_hide_a_failed_assert(mode):
    code = "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
    r = run_tests(code, ["try:\n    assert 1 == 2\nexcept Exception:\n    pass\nassert 0"], mode=mode)
    assert not r.passed and r.status == "failed"


# ---- resource bombs ----------------------------------------------------------------------------


def test_fork_bomb_is_contained(mode):
    r = run_program("import os\nwhile True:\n    os.fork()\n", timeout_s=5, nproc=16, mode=mode)
    assert not r.passed
    assert r.duration_s < 5.5
    assert_nothing_left(mode)
    assert run_program("print(1)", mode=mode).passed


def test_memory_bomb_is_stopped_by_the_memory_limit(mode):
    r = run_program("x = []\nwhile True:\n    x.append(bytearray(10 ** 7))\n", memory_mb=256, mode=mode)
    assert not r.passed
    assert r.status == "memory" and r.memory_exceeded


def test_infinite_loop_ignoring_sigterm_is_killed_at_the_wall_timeout(mode):
    src = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    t0 = time.monotonic()
    r = run_program(src, timeout_s=1, mode=mode)
    assert not r.passed and r.status == "timeout" and r.timed_out
    assert time.monotonic() - t0 < 4
    assert_nothing_left(mode)


def test_sleeping_program_is_killed_at_the_wall_timeout(mode):
    r = run_program("import time\ntime.sleep(60)\n", timeout_s=0.5, mode=mode)
    assert r.status == "timeout" and r.duration_s < 2


def test_disk_filling_is_stopped_by_the_file_size_limit(mode):
    src = "with open('big', 'wb') as f:\n    for _ in range(100):\n        f.write(b'x' * 1024 * 1024)\n"
    r = run_program(src, max_file_mb=4, mode=mode)
    assert not r.passed and r.status == "error"
    assert "File too large" in r.reason or "EFBIG" in r.reason or "27" in r.reason


def test_huge_output_is_cut_and_killed(mode):
    r = run_program("while True:\n    print('x' * 10000)\n", max_output_bytes=200_000, mode=mode)
    assert not r.passed and r.status == "output_limit"
    assert len(r.stdout) <= CAPTURE_BYTES and r.output_truncated
    assert_nothing_left(mode)


def test_segfault_is_an_error(mode):
    r = run_program("import ctypes\nctypes.string_at(0)\n", mode=mode)
    assert not r.passed and r.status == "error" and "SIGSEGV" in r.reason


def test_reading_stdin_gets_eof_at_once(mode):
    r = run_program("import sys\nassert sys.stdin.read() == ''\ninput()\n", timeout_s=5, mode=mode)
    assert not r.passed and "EOFError" in r.reason and r.duration_s < 2


# ---- the host stays unharmed ------------------------------------------------------------------


def test_writes_outside_its_folder_do_not_reach_the_host(mode):
    name = f"cotshape-escape-{uuid.uuid4().hex}"
    targets = [f"/tmp/{name}", f"/var/tmp/{name}", f"/dev/shm/{name}",
               os.path.join(os.path.expanduser("~"), name), os.path.join(os.getcwd(), name)]
    src = (
        f"for p in {targets!r}:\n"
        "    try:\n"
        "        open(p, 'w').write('pwned')\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = run_program(src, mode=mode)
    assert r.passed  # nothing in it fails; what matters is where the files went
    assert [t for t in targets if os.path.exists(t)] == []


def test_deleting_host_files_fails(mode, tmp_path):
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("keep me")
    sentinel.chmod(0o666)
    src = (
        "import os, shutil\n"
        f"for f in ({str(sentinel)!r},):\n"
        "    try:\n        os.remove(f)\n    except OSError:\n        pass\n"
        f"shutil.rmtree({str(tmp_path)!r}, ignore_errors=True)\n"
    )
    run_program(src, mode=mode)
    assert sentinel.read_text() == "keep me"


def test_network_connection_to_host_loopback_fails(mode):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(5)
    port = srv.getsockname()[1]
    received: list[bytes] = []

    def accept() -> None:
        try:
            conn, _ = srv.accept()
            received.append(conn.recv(100))
            conn.close()
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    src = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'leak')\n"
    r = run_program(src, mode=mode)
    srv.close()
    t.join()
    assert not r.passed
    assert received == []


def test_parent_environment_is_not_visible(mode, monkeypatch):
    secret = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("COTSHAPE_TEST_SECRET", secret)
    src = (
        "import os\n"
        "print(dict(os.environ))\n"
        "for pid in os.listdir('/proc'):\n"
        "    if pid.isdigit():\n"
        "        try:\n"
        "            print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "        except OSError:\n"
        "            pass\n"
        "assert 'COTSHAPE_TEST_SECRET' not in os.environ\n"
    )
    r = run_program(src, mode=mode)
    assert r.passed, r.reason
    assert secret not in r.stdout + r.stderr
    assert sorted(eval(r.stdout.splitlines()[0])) == ["HOME", "LANG", "PATH", "TMPDIR"]


def test_killing_its_parent_fails_and_the_sandbox_keeps_working(mode):
    r = run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", mode=mode)
    assert not r.passed
    assert run_program("print('alive')", mode=mode).passed


def test_killing_its_process_group_only_kills_itself(mode):
    r = run_program("import os, signal\nos.killpg(0, signal.SIGKILL)\n", mode=mode)
    assert not r.passed and "SIGKILL" in r.reason
    assert run_program("print('alive')", mode=mode).passed


@pytest.mark.skipif(not _ROOT, reason="without root, programs share our uid: kill(-1) would hit this test run")
def test_kill_every_process_it_can_harms_nobody_else(mode):
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        # kill(-1) spares the caller: the program itself may well pass; nobody else may die
        run_program("import os, signal\nos.kill(-1, signal.SIGKILL)\n", mode=mode)
        assert bystander.poll() is None
        assert run_program("print('alive')", mode=mode).passed
    finally:
        bystander.kill()
        bystander.wait()


def test_reading_the_servers_memory_fails(mode):
    src = (
        "import os\n"
        "try:\n"
        "    open(f'/proc/{os.getppid()}/mem', 'rb')\n"
        "    print('OPENED')\n"
        "except OSError:\n"
        "    pass\n"
    )
    r = run_program(src, mode=mode)
    assert "OPENED" not in r.stdout


def test_daemonized_children_are_killed(mode):
    marker = f"{time.time_ns() % 10**6 + 10**6}.{os.getpid()}"
    src = (
        "import os\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        f"        os.execv('/bin/sleep', ['sleep', {marker!r}])\n"
        "    os._exit(0)\n"
        "import time\ntime.sleep(0.3)\n"
    )
    r = run_program(src, mode=mode)
    assert r.passed  # the program itself is fine; what it left behind must be gone
    deadline = time.monotonic() + 2
    while _cmdline_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _cmdline_processes(marker) == []
    assert_nothing_left(mode)


# ---- the pool and the API ---------------------------------------------------------------------


def test_run_tests_many_keeps_order(mode):
    jobs = [
        {"code": "def f():\n    return 1\n", "tests": ["assert f() == 1"]},
        {"code": "def f():\n    return 2\n", "tests": ["assert f() == 1"]},
        {"code": "import time\n", "tests": ["time.sleep(5)"], "timeout_s": 0.5},
        {"code": "X = 3\n", "setup_code": "Y = X + 1\n", "tests": ["assert Y == 4"]},
    ]
    res = run_tests_many(jobs, workers=2, mode=mode)
    assert [r.status for r in res] == ["passed", "failed", "timeout", "passed"]
    assert all(isinstance(r, ExecutionResult) for r in res)


def test_run_tests_many_rejects_unknown_job_keys():
    with pytest.raises(ValueError, match=r"job 1 has unknown keys \['test'\]"):
        run_tests_many([{"code": "", "tests": []}, {"code": "", "tests": [], "test": []}], mode="rlimit")


def test_bad_limit_names_the_parameter():
    with pytest.raises(ValueError, match="timeout_s=0"):
        run_program("pass", timeout_s=0, mode="rlimit")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="'docker'"):
        run_program("pass", mode="docker")


def test_isolation_report_describes_the_machine():
    rep = isolation_report()
    assert rep["mode"] in ("bwrap", "rlimit")
    assert rep["mode"] == ("bwrap" if rep["bwrap_works"] else "rlimit")
    assert "RLIMIT_NPROC" in rep["rlimits"]


def test_without_bwrap_auto_falls_back_with_one_warning_and_bwrap_is_refused(monkeypatch):
    no_bwrap = {"path": None, "works": False, "error": "no bwrap binary", "size_flag": False}
    monkeypatch.setattr(isolation, "probe_bwrap", lambda: no_bwrap)
    monkeypatch.delenv(MODE_ENV, raising=False)
    reset_probe_cache()  # an earlier test may have given the fallback warning already
    with pytest.warns(SandboxWarning, match="falls back to rlimits"):
        assert resolve_mode(None) == "rlimit"
    assert resolve_mode("auto") == "rlimit"  # the warning is given once
    with pytest.raises(SandboxUnavailable, match="no bwrap binary"):
        resolve_mode("bwrap")
