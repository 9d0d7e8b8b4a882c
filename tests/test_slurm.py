"""`cotshape slurm submit` (cotshape/pipeline/slurm.py): the stage order, the afterok wiring, the
dry-run script and the errors, on a small dvc.yaml with a fake ``sbatch``; then (slow) the graph of a
two-stage pipeline on a real one-node Slurm started on localhost (skipped where Slurm is missing
or cannot start, with the reason)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cotshape.cli import main
from cotshape.pipeline import slurm

DVC_YAML = """\
stages:
  a:
    cmd: echo a > a.txt
    outs: [a.txt]
  b:
    cmd: cat a.txt > b.txt
    deps: [a.txt]
    outs: [b.txt]
  c:  # declared before the sft stages it depends on: the order must still put it last
    cmd: cat sft-x.txt sft-y.txt > c.txt
    deps: [sft-x.txt, sft-y.txt]
    outs: [c.txt]
  sft:
    foreach: [x, y]
    do:
      cmd: cat b.txt > sft-${item}.txt
      deps: [b.txt]
      outs:
        - sft-${item}.txt
"""

FAKE_SBATCH = """\
#!{python}
# records its argv (one JSON list a line) and prints job ids 101, 102, ... as `sbatch --parsable`
import json, os, sys
d = os.path.dirname(os.path.abspath(__file__))
name = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--job-name="))
if name == os.environ.get("FAKE_SBATCH_FAIL"):
    print("sbatch: error: Batch job submission failed: Invalid partition name specified", file=sys.stderr)
    sys.exit(1)
with open(os.path.join(d, "calls.jsonl"), "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
n = sum(1 for _ in open(os.path.join(d, "calls.jsonl")))
print(f"{{100 + n}};cluster" if n == 1 else 100 + n)  # --parsable prints "id" or "id;cluster"
"""


def _init_repo(root: Path, dvc_yaml: str = DVC_YAML, params: str | None = None) -> Path:
    from dvc.repo import Repo

    root.mkdir(parents=True, exist_ok=True)
    Repo.init(str(root), no_scm=True).close()
    (root / "dvc.yaml").write_text(dvc_yaml)
    if params is not None:
        (root / "params.yaml").write_text(params)
    return root


@pytest.fixture
def repo(tmp_path):
    return _init_repo(tmp_path / "repo")


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """A fake ``sbatch`` first on PATH; returns the function reading the argv it was called with."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "sbatch"
    exe.write_text(FAKE_SBATCH.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    def calls() -> list[list[str]]:
        f = bin_dir / "calls.jsonl"
        return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []

    return calls


def _wrap(stage):
    return ["--wrap", f"dvc --wait-for-lock repro --single-item {stage}"]


def _head(repo, stage):
    return ["--parsable", f"--job-name=cotshape-{stage}", f"--chdir={repo}",
            f"--output={repo}/.dvc/tmp/slurm/{stage}-%j.log"]


def test_order_and_upstream(repo):
    jobs = slurm.plan(repo)
    assert [(j.stage, j.upstream, j.gpus) for j in jobs] == [
        ("a", [], 0), ("b", ["a"], 0), ("sft@x", ["b"], 0), ("sft@y", ["b"], 0),
        ("c", ["sft@x", "sft@y"], 0)]


@pytest.mark.parametrize("targets, expected", [
    (["b"], ["a", "b"]),
    (["sft@y"], ["a", "b", "sft@y"]),
    (["sft"], ["a", "b", "sft@x", "sft@y"]),  # a group name: all its expansions
    (["c", "a"], ["a", "b", "sft@x", "sft@y", "c"]),
])
def test_targets_take_their_upstream(repo, targets, expected):
    assert [j.stage for j in slurm.plan(repo, targets)] == expected


def test_gpus_from_params_and_option(tmp_path):
    params = textwrap.dedent("""\
        base: {device: cuda, backend: vllm}
        sample: {tensor_parallel_size: 2}
        sft: {launcher: fsdp, num_processes: 4}
        """)
    yaml_ = DVC_YAML.replace("  c:  #", "  evaluate:  #").replace("c.txt", "e.txt")
    repo = _init_repo(tmp_path / "r", yaml_, params)
    gpus = {j.stage: j.gpus for j in slurm.plan(repo)}
    assert gpus == {"a": 0, "b": 0, "sft@x": 4, "sft@y": 4, "evaluate": 2}
    assert {j.stage: j.gpus for j in slurm.plan(repo, gpus=1)} == {
        "a": 0, "b": 0, "sft@x": 1, "sft@y": 1, "evaluate": 1}
    (repo / "params.yaml").write_text("base: {device: auto}\n")  # auto: no GPU asked for
    assert {j.gpus for j in slurm.plan(repo)} == {0}


def test_submit_wires_afterok_ids(repo, fake_sbatch, capsys):
    assert main(["slurm", "submit", "--repo", str(repo), "--partition", "gpu", "--gpus", "1",
                 "--sbatch-arg=--time=1:00:00"]) == 0
    calls = fake_sbatch()
    assert [c[0] for c in calls] == ["--parsable"] * 5
    assert calls[0] == _head(repo, "a") + ["--partition=gpu", "--time=1:00:00"] + _wrap("a")
    assert calls[1] == _head(repo, "b") + ["--partition=gpu", "--time=1:00:00",
                                           "--dependency=afterok:101", "--kill-on-invalid-dep=yes"] + _wrap("b")
    assert calls[2] == _head(repo, "sft@x") + ["--partition=gpu", "--gres=gpu:1", "--time=1:00:00",
                                               "--dependency=afterok:102", "--kill-on-invalid-dep=yes"] + _wrap("sft@x")
    assert calls[3][-4:] == ["--dependency=afterok:102", "--kill-on-invalid-dep=yes"] + _wrap("sft@y")
    assert calls[4] == _head(repo, "c") + ["--partition=gpu", "--time=1:00:00",
                                           "--dependency=afterok:103:104", "--kill-on-invalid-dep=yes"] + _wrap("c")
    assert capsys.readouterr().out.splitlines() == [
        "101\ta", "102\tb after 101", "103\tsft@x gpu:1 after 102", "104\tsft@y gpu:1 after 102",
        "105\tc after 103,104"]
    assert (repo / ".dvc" / "tmp" / "slurm").is_dir()  # sbatch does not create the log folder


def test_dry_run_prints_script_and_runs_nothing(repo, fake_sbatch, capsys):
    assert main(["slurm", "submit", "--repo", str(repo), "--dry-run", "--targets", "sft@x"]) == 0
    assert fake_sbatch() == []
    logs = f"{repo}/.dvc/tmp/slurm"
    head = "sbatch --parsable --job-name=cotshape-{0} --chdir={1} --output={2}/{0}-%j.log"
    wrap = "--wrap 'dvc --wait-for-lock repro --single-item {0}')"
    ids = "; JOB_{0}=${{JOB_{0}%%;*}}"
    assert capsys.readouterr().out.splitlines() == [
        "set -e",
        f"mkdir -p {logs}",
        "JOB_a=$(" + head.format("a", repo, logs) + " " + wrap.format("a") + ids.format("a"),
        "JOB_b=$(" + head.format("b", repo, logs) + ' "--dependency=afterok:$JOB_a" --kill-on-invalid-dep=yes '
        + wrap.format("b") + ids.format("b"),
        "JOB_sft_x=$(" + head.format("sft@x", repo, logs) + ' "--dependency=afterok:$JOB_b" '
        "--kill-on-invalid-dep=yes " + wrap.format("sft@x") + ids.format("sft_x"),
    ]
    assert not (repo / ".dvc" / "tmp" / "slurm").exists()


def test_dry_run_script_runs_in_a_shell(repo, fake_sbatch, capsys):
    """The printed script, pasted into bash, submits the same wiring as the command."""
    assert main(["slurm", "submit", "--repo", str(repo), "--dry-run"]) == 0
    script = capsys.readouterr().out
    subprocess.run(["bash", "-euc", script], check=True)
    deps = [next((a for a in c if a.startswith("--dependency=")), None) for c in fake_sbatch()]
    assert deps == [None, "--dependency=afterok:101", "--dependency=afterok:102",
                    "--dependency=afterok:102", "--dependency=afterok:103:104"]


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_unknown_target_names_the_closest(repo, capsys):
    assert _one_error_line(capsys, ["slurm", "submit", "--repo", str(repo), "--dry-run", "--targets", "sft@z"]) \
        == "error: --targets: unknown stage 'sft@z'; did you mean 'sft@y' or 'sft@x' or 'sft'?"
    assert _one_error_line(capsys, ["slurm", "submit", "--repo", str(repo), "--dry-run", "--targets", "qqqq"]) \
        == "error: --targets: unknown stage 'qqqq'"


def test_no_dvc_yaml(tmp_path, capsys):
    assert _one_error_line(capsys, ["slurm", "submit", "--repo", str(tmp_path), "--dry-run"]) \
        == f"error: {tmp_path}: no dvc.yaml (not a DVC pipeline repository)"


def test_unreadable_dvc_yaml_is_one_line(tmp_path, capsys):
    repo = _init_repo(tmp_path / "r", "stages:\n  a:\n    cmd: x\n    deps: [b.txt]\n    outs: [b.txt]\n")
    line = _one_error_line(capsys, ["slurm", "submit", "--repo", str(repo), "--dry-run"])
    assert line.startswith(f"error: {repo}: DVC cannot read the pipeline: "), line


def test_no_sbatch_on_path(repo, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    assert _one_error_line(capsys, ["slurm", "submit", "--repo", str(repo)]) \
        == "error: sbatch not found on PATH (run on a Slurm login node, or use --dry-run)"
    assert main(["slurm", "submit", "--repo", str(repo), "--dry-run"]) == 0  # a dry run needs none


def test_failing_sbatch_names_submitted_jobs(repo, fake_sbatch, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_SBATCH_FAIL", "cotshape-sft@x")
    line = _one_error_line(capsys, ["slurm", "submit", "--repo", str(repo)])
    assert line == ("error: sbatch failed for stage sft@x: sbatch: error: Batch job submission failed: "
                    "Invalid partition name specified (already submitted: 101 102)")


def test_bad_options(repo, capsys):
    assert _one_error_line(capsys, ["slurm", "submit", "--repo", str(repo), "--dry-run", "--gpus", "-1"]) \
        == "error: --gpus: must be >= 0, got -1"


def test_no_stage_script_imports_slurm():
    root = Path(__file__).resolve().parents[1]
    for script in (root / "stages").glob("*.py"):
        assert "slurm" not in script.read_text(), script


# ---- a real Slurm on localhost ------------------------------------------------------------
SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")

SLURM_CONF = """\
ClusterName=cotshape-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/munge.socket
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
MinJobAge=600
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 3) -> str:
    lines = path.read_text(errors="replace").splitlines() if path.exists() else []
    return " | ".join(lines[-n:]) or f"(no {path.name})"


@pytest.fixture
def local_slurm(tmp_path_factory, monkeypatch):
    """munged + slurmctld + slurmd for one node (this host) in a temporary folder, on free ports;
    SLURM_CONF points the clients at it. Skips, with the error, where it cannot run."""
    # the daemons are in /usr/sbin, which a user's PATH may lack
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    exe = {b: shutil.which(b, path=search) for b in SLURM_BINARIES}
    missing = [b for b, path in exe.items() if path is None]
    if missing:
        pytest.skip(f"Slurm not installed: {', '.join(missing)} not on PATH "
                    "(apt-get install slurm-wlm munge)")
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool", "log"):
        (d / sub).mkdir()
    (d / "munge").chmod(0o700)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    conf = d / "slurm.conf"
    import getpass

    conf.write_text(SLURM_CONF.format(host=socket.gethostname().split(".")[0], user=getpass.getuser(),
                                      ctld_port=_free_port(), slurmd_port=_free_port(), d=d,
                                      cpus=os.cpu_count() or 1))
    monkeypatch.setenv("SLURM_CONF", str(conf))
    m = subprocess.run([exe["munged"], "--force", f"--socket={d}/munge/munge.socket", f"--key-file={key}",
                        f"--pid-file={d}/munge/munged.pid", f"--log-file={d}/log/munged.log",
                        f"--seed-file={d}/munge/seed"], capture_output=True, text=True)
    if m.returncode != 0:
        pytest.skip(f"munged cannot start: {' '.join((m.stderr or m.stdout).split())}")
    try:
        for cmd in ([exe["slurmctld"], "-c", "-i"], [exe["slurmd"]]):
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                name = Path(cmd[0]).name
                pytest.skip(f"{name} cannot start: {' '.join((r.stderr or r.stdout).split())} "
                            f"[log: {_tail(d / 'log' / (name + '.log'))}]")
        state = ""
        for _ in range(60):
            s = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
            state = (s.stdout.strip() or s.stderr.strip())
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            pytest.skip(f"the Slurm node is not idle after 30 s: sinfo says {state!r} "
                        f"[slurmctld: {_tail(d / 'log' / 'slurmctld.log')}] "
                        f"[slurmd: {_tail(d / 'log' / 'slurmd.log')}]")
        yield d
    finally:
        subprocess.run(["scontrol", "shutdown"], capture_output=True)  # slurmctld and slurmd
        time.sleep(1)
        for pid_file in (d / "slurmd.pid", d / "slurmctld.pid"):  # still up: end them by their pid
            try:
                os.kill(int(pid_file.read_text().strip()), 15)
            except (OSError, ValueError):
                pass
        subprocess.run([exe["munged"], "--stop", f"--socket={d}/munge/munge.socket"], capture_output=True)


REAL_DVC_YAML = """\
stages:
  hello:
    cmd: echo hello > hello.txt
    outs: [hello.txt]
  shout:
    foreach: [one, two]
    do:
      cmd: sleep 2 && tr a-z A-Z < hello.txt > shout-${item}.txt && echo ${item} >> shout-${item}.txt
      deps: [hello.txt]
      outs:
        - shout-${item}.txt
  both:
    cmd: cat shout-one.txt shout-two.txt > both.txt
    deps: [shout-one.txt, shout-two.txt]
    outs: [both.txt]
"""


@pytest.mark.slow
def test_real_slurm_runs_the_graph(local_slurm, tmp_path, monkeypatch, capsys):
    repo = _init_repo(tmp_path / "repo", REAL_DVC_YAML)
    # the jobs get the submitting environment (sbatch --export=ALL): this venv's dvc on PATH
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    capsys.readouterr()  # "Initialized DVC repository."
    t0 = time.time()
    assert main(["slurm", "submit", "--repo", str(repo)]) == 0
    lines = capsys.readouterr().out.splitlines()
    ids = {line.split("\t")[1].split()[0]: line.split("\t")[0] for line in lines}
    assert list(ids) == ["hello", "shout@one", "shout@two", "both"]
    states: dict[str, str] = {}
    for _ in range(240):
        for stage, jid in ids.items():
            out = subprocess.run(["scontrol", "show", "job", jid, "-o"], capture_output=True, text=True).stdout
            states[stage] = next((w.split("=", 1)[1] for w in out.split() if w.startswith("JobState=")), "?")
        if all(s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY") for s in states.values()):
            break
        time.sleep(0.5)
    wall = time.time() - t0
    logs = {p.name: p.read_text() for p in (repo / ".dvc" / "tmp" / "slurm").glob("*.log")}
    assert states == dict.fromkeys(ids, "COMPLETED"), (states, logs)
    times = {}
    for stage, jid in ids.items():
        out = subprocess.run(["scontrol", "show", "job", jid, "-o"], capture_output=True, text=True).stdout
        kv = dict(w.split("=", 1) for w in out.split() if "=" in w)
        times[stage] = f"job {jid} {kv.get('StartTime', '?')[-8:]}-{kv.get('EndTime', '?')[-8:]}"
    print(f"real slurm: {times}, all COMPLETED in {wall:.1f} s", file=sys.stderr)
    assert (repo / "both.txt").read_text() == "HELLO\none\nHELLO\ntwo\n"
    status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, capture_output=True, text=True)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    dep = subprocess.run(["scontrol", "show", "job", ids["both"], "-o"], capture_output=True, text=True).stdout
    assert "JobName=cotshape-both" in dep
