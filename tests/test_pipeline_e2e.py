"""The whole stage graph, end to end, with real DVC in a temporary git repo.

Tiny random Llama as teacher and student, tiny sizes, one task (countdown): every stage runs for
real (sampling, verification, selection, paraphrase, degradation, TRL SFT, greedy evaluation,
closeness, MLflow, the claims and the report). Then: a second `dvc repro` does nothing; `dvc push`
to a local remote, a fresh clone and `dvc pull` give identical data; changing
`degrade.flawed_fractions` re-runs only degrade and what depends on it; `dvc exp run -S
sample.k=...` works.

A random tiny teacher almost never answers correctly, so G is (nearly) empty here: the tiny run
uses `select.balance: false` (every set keeps all training problems; balance would leave none)
and builds the mixtures from H (`degrade.base_set: H`), so that the mixture stages train for real.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TINY_PARAMS = {
    "base": {"seed": 0, "tasks": ["countdown"], "device": "cpu", "dtype": "float32"},
    "prepare": {"source": "offline", "train_size": 6, "test_size": 4, "level": "easy"},
    # shots: the few-shot teacher prompt is exercised (countdown has 4 exemplars; at most 4)
    "sample": {"k": 2, "shots": 2, "max_new_tokens": 12, "temperature": 1.0, "batch_size": 8},
    "select": {"balance": False},
    "paraphrase": {"max_new_tokens": 12, "retries": 0},
    # fractions in (0, 1]: 0 % is the base set itself
    "degrade": {"flawed_fractions": [1.0], "base_set": "H", "step_k": [1, 2]},  # the step_k sweep: two sets
    # 6 examples, batch 4: 2 optimizer steps; a checkpoint after step 1, scored by evaluate_ckpt;
    # H trained 3 times (sft.runs_by_set), every other set twice: its comparisons pair 2 runs
    "sft": {"runs": 2, "runs_by_set": {"H": 3}, "epochs": 1, "batch_size": 4, "max_length": 256, "save_steps": [1]},
    "evaluate": {"max_new_tokens": 12, "batch_size": 8},
    "closeness": {"batch_size": 4},
    "report": {"margin": 0.1, "n_boot": 200},
}
CLAIM_IDS = ["C1", "C2", "C3", "C4", "C5", "C6"]
VERDICTS = {"holds", "contradicted", "inconclusive"}


def _env(repo: Path) -> dict[str, str]:
    venv_bin = str(Path(sys.executable).parent)
    return dict(
        os.environ,
        PATH=f"{venv_bin}:{os.environ['PATH']}",
        HF_HUB_OFFLINE="1",
        MLFLOW_TRACKING_URI=f"sqlite:///{repo}/mlflow.db",
        GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com",
    )


def sh(repo: Path, *cmd: str, check: bool = True, timeout: int = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def dvc(repo: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return sh(repo, sys.executable, "-m", "dvc", *args, **kw)


def tree_digest(root: Path) -> dict[str, str]:
    # mlflow_run.json: local MLflow state in an SFT folder, .dvcignore'd (never pushed or pulled)
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != "mlflow_run.json"}


@pytest.fixture(scope="module")
def repo(tmp_path_factory, tiny_model_dir):
    repo = tmp_path_factory.mktemp("pipeline") / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    # the code stage fingerprints the cotshape/ modules each stage runs: they must exist in the repo
    shutil.copytree(ROOT / "cotshape", repo / "cotshape", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY_PARAMS.items():
        params[section].update(values)
    params["base"]["teacher"] = params["base"]["student"] = str(tiny_model_dir)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    remote = repo.parent / "remote"
    sh(repo, "git", "init", "-q")
    dvc(repo, "init", "-q")
    dvc(repo, "config", "core.analytics", "false")
    dvc(repo, "remote", "add", "-d", "local", str(remote))
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "init")
    t0 = time.time()
    proc = dvc(repo, "repro")
    print(f"first dvc repro: {time.time() - t0:.0f}s")
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "repro")
    return repo, proc


def test_repro_builds_everything(repo):
    repo, proc = repo
    assert "Running stage 'report'" in proc.stdout
    summary = (repo / "reports" / "summary.md").read_text()
    assert "countdown" in summary
    for png in ("mixture_curve.png", "loss_curves.png", "closeness.png"):
        data = (repo / "reports" / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert "## The paper's claims on this run" in summary
    assert "| 0 % (H) |" in summary and "mix-0.0" not in summary  # the curve's 0 % point is the base set
    # sft.save_steps: the checkpoint inside the SFT out, evaluated by its own stage, in the report
    assert (repo / "models" / "sft" / "countdown-H" / "run-1" / "checkpoints" / "step-1").is_dir()
    ckpt = json.loads((repo / "metrics" / "stages" / "eval" / "checkpoints" / "countdown-H-step-1.json").read_text())
    assert ckpt["n"] == 4 and ckpt["runs"] == 3 and "Running stage 'evaluate_ckpt@countdown-H-1'" in proc.stdout
    assert "## Intermediate checkpoints" in summary
    base = json.loads((repo / "metrics" / "stages" / "eval" / "countdown-base.json").read_text())
    assert base["n"] == 4 and 0.0 <= base["accuracy"] <= 1.0
    lo, hi = base["ci95"]
    assert 0.0 <= lo <= base["accuracy"] <= hi <= 1.0
    ids = json.loads((repo / "data" / "sets" / "countdown" / "ids.json").read_text())
    assert ids["n"] == len(ids["problem_ids"]) == 6  # select.balance: false keeps every training problem
    h = json.loads((repo / "metrics" / "stages" / "sft" / "countdown-H.json").read_text())
    assert h["examples"] == 6 and h["steps"] >= 1
    # sft.runs_by_set H: 3 -> three training runs of H, seeds base.sft_seed + 0, 1, 2, each evaluated
    assert h["runs"] == 3 and h["seeds"] == [0, 1, 2] and len(h["per_run"]) == 3
    assert sorted(p.name for p in (repo / "models" / "sft" / "countdown-H").iterdir()) == ["run-0", "run-1", "run-2"]
    ev_h = json.loads((repo / "metrics" / "stages" / "eval" / "countdown-H.json").read_text())
    assert ev_h["runs"] == 3 and len(ev_h["per_run"]) == 3
    assert json.loads((repo / "metrics" / "stages" / "sft" / "countdown-P.json").read_text())["runs"] == 2  # sft.runs
    mix = json.loads((repo / "metrics" / "stages" / "sft" / "countdown-mix-1.0.json").read_text())
    assert mix["examples"] == 6
    assert not (repo / "data" / "sets" / "countdown" / "mix" / "mix-0.0.jsonl").exists()
    samples = [json.loads(x) for x in (repo / "data" / "samples" / "countdown.jsonl").read_text().splitlines()]
    assert len(samples) == 6 * 2 and len({s["id"] for s in samples}) == 12

    # decontaminate@T: every set against the test problems; action report trains on every problem
    decon = json.loads((repo / "metrics" / "stages" / "decontaminate" / "countdown.json").read_text())
    assert "Running stage 'decontaminate@countdown'" in proc.stdout
    assert decon["action"] == "report" and decon["compared"] == 6 and decon["test_problems"] == 4
    assert {"H", "G", "W", "P", "mix-1.0", "step-1", "step-2"} <= set(decon["sets"])
    trained_ids = json.loads((repo / "data" / "train_ids" / "countdown.json").read_text())
    assert trained_ids["problem_ids"] == ids["problem_ids"]
    assert "## Test-set overlap" in summary and "against 4 test problems" in summary
    # what produced the numbers: one block per evaluation file, merged by the report
    assert ev_h["provenance"]["backend"] == "transformers" and ev_h["provenance"]["device"] == "cpu"
    prov = json.loads((repo / "metrics" / "provenance.json").read_text())
    assert prov["versions"]["torch"] and prov["versions"]["transformers"] and prov["dtype"] == "float32"
    assert prov["evaluation_files"] >= 8 and prov["batch_size"]["evaluate"] == 8 and "mixed" not in prov

    claims = json.loads((repo / "metrics" / "claims.json").read_text())
    assert claims["margin"] == 0.1
    assert [c["id"] for c in claims["claims"]] == CLAIM_IDS  # 6 claims per task, one task
    assert all(c["task"] == "countdown" and c["verdict"] in VERDICTS for c in claims["claims"])
    for c in claims["claims"]:  # every accuracy claim: the runs paired and the run-level differences
        if c["id"] != "C1" and "missing" not in c["evidence"]:
            assert c["evidence"]["runs"] == 2 and len(c["evidence"]["per_run"]) == 2, c
    c4 = next(c for c in claims["claims"] if c["id"] == "C4")["evidence"]  # P - H: H's runs 0 and 1 of 3
    assert (c4["runs_a"], c4["runs_b"]) == (3, 2)
    assert "countdown" in claims["variance"]
    summary_metrics = json.loads((repo / "metrics" / "summary.json").read_text())
    entry = summary_metrics["countdown"]
    assert entry["n_test"] == 4 and entry["both_frac"] >= 0
    lo, hi = json.loads(entry["base"]["ci"])  # one text column "[lo, hi]" in dvc exp show
    assert lo <= entry["base"]["acc"] <= hi
    assert "acc" in entry["H"]
    # metrics/summary.json is the one DVC metrics file; the per-stage metrics are plain outs
    shown = dvc(repo, "metrics", "show").stdout
    assert "metrics/summary.json" in shown and "acc" in shown
    assert "metrics/stages/eval/countdown-H.json" not in shown


def test_second_repro_is_a_noop(repo):
    repo, _ = repo
    t0 = time.time()
    proc = dvc(repo, "repro")
    elapsed = time.time() - t0
    assert "Running stage" not in proc.stdout
    assert "up to date" in proc.stdout.lower()
    print(f"no-op dvc repro: {elapsed:.2f}s")


def _ran(proc: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in proc.stdout.splitlines() if line.startswith("Running stage")}


def test_library_change_reruns_only_the_stages_that_run_it(repo):
    """Each stage depends on the fingerprint of the code its script runs (code/X.txt, written by
    the code stage): editing cotshape/data/select.py reruns the code stage and select (not sampling
    and nothing upstream); an edit of a module no stage runs (the CLI) reruns only the code stage;
    reverting restores the state."""
    repo, _ = repo
    path, cli = repo / "cotshape" / "data" / "select.py", repo / "cotshape" / "cli.py"
    original, cli_original = path.read_text(), cli.read_text()
    try:
        path.write_text(original + "\n# a change\n")
        assert "cotshape" in dvc(repo, "status").stdout  # the code stage's package folder changed
        proc = dvc(repo, "repro")
        ran = _ran(proc)
        assert {"code", "select@countdown"} <= ran, proc.stdout
        assert not any(s.startswith(("sample@", "prepare@", "verify@", "models", "merge_samples@")) for s in ran), ran
        # a comment leaves select's outputs byte-identical: nothing downstream trains again
        assert not any(s.startswith(("sft", "evaluate")) for s in ran), ran
        assert "cotshape/data/select.py" in (repo / "code" / "select_gw.txt").read_text()
        cli.write_text(cli_original + "\n# a change\n")
        assert _ran(dvc(repo, "repro")) == {"code"}
    finally:
        path.write_text(original)
        cli.write_text(cli_original)
    dvc(repo, "repro")
    assert "up to date" in dvc(repo, "status").stdout.lower()


def test_push_clone_pull_identical(repo):
    repo, _ = repo
    dvc(repo, "push")
    clone = repo.parent / "clone"
    sh(repo.parent, "git", "clone", "-q", str(repo), str(clone))
    dvc(clone, "pull")
    for folder in ("data", "models"):
        assert tree_digest(clone / folder) == tree_digest(repo / folder)
    status = dvc(clone, "status").stdout
    assert "up to date" in status.lower(), status


@pytest.fixture()
def s3_server(monkeypatch):
    """A real S3-protocol server (moto's, in a thread of this process) on a loopback port the
    OS picks, with one empty bucket; credentials and proxy settings for it in the environment."""
    pytest.importorskip("moto.server", reason="dev extra: moto[s3] + flask")
    pytest.importorskip("dvc_s3", reason="extra: dvc[s3]")
    import boto3
    from moto.server import ThreadedMotoServer

    for key, value in {"AWS_ACCESS_KEY_ID": "cotshape", "AWS_SECRET_ACCESS_KEY": "cotshape-secret",
                       "AWS_DEFAULT_REGION": "us-east-1", "NO_PROXY": "127.0.0.1,localhost",
                       "no_proxy": "127.0.0.1,localhost"}.items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(key, raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="cotshape")
        yield url
    finally:
        server.stop()


def test_push_pull_through_s3_on_loopback(repo, s3_server):
    """The README's S3 recipe (`dvc remote add` + `endpointurl`) against a real S3-protocol
    server: push everything, pull it into a fresh clone, identical data."""
    repo, _ = repo
    try:
        dvc(repo, "remote", "add", "s3", "s3://cotshape/store")
        dvc(repo, "remote", "modify", "s3", "endpointurl", s3_server)
        sh(repo, "git", "commit", "-qam", "s3 remote")
        dvc(repo, "push", "-r", "s3")
        clone = repo.parent / "clone-s3"
        sh(repo.parent, "git", "clone", "-q", str(repo), str(clone))
        dvc(clone, "pull", "-r", "s3")
        for folder in ("data", "models"):
            assert tree_digest(clone / folder) == tree_digest(repo / folder)
        assert "up to date" in dvc(clone, "status").stdout.lower()
    finally:  # the remote must not outlive the server for the tests that follow
        dvc(repo, "remote", "remove", "s3", check=False)
        sh(repo, "git", "commit", "-qam", "drop s3 remote", check=False)


def test_changing_fractions_reruns_only_downstream(repo):
    repo, _ = repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["degrade"]["flawed_fractions"] = [0.5]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = dvc(repo, "repro")
    ran = _ran(proc)
    assert "degrade@countdown" in ran and "sft_mix@countdown-0.5" in ran and "report" in ran
    assert not any(s.startswith(("sample@", "merge_samples@", "verify@", "select@", "prepare@", "paraphrase@", "models"))
                   for s in ran), ran
    assert not any(s.startswith(("sft@", "evaluate@", "evaluate_base@")) for s in ran), ran


def test_exp_run_with_param_override(repo):
    repo, _ = repo
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "fractions")
    # only up to select: the override must reach sampling; the rest of the graph is covered above
    proc = dvc(repo, "exp", "run", "-S", "sample.k=3", "--name", "k3", "select@countdown")
    assert "Running stage 'sample@countdown-0'" in proc.stdout
    shown = dvc(repo, "exp", "show", "--csv").stdout
    assert "k3" in shown
    # the compact metrics/summary.json is what dvc exp show lists: one column per number
    header = shown.splitlines()[0].split(",")
    assert "countdown.H.acc" in header and "countdown.H.ci" in header


def _lock_is_self_consistent(lock: dict) -> list[str]:
    """Every dep of a stage on a path that another stage of the same lock outputs has that
    output's hash: the experiment read only what it built itself."""
    outs: dict[str, str] = {}
    for entry in lock["stages"].values():
        for o in entry.get("outs", []):
            outs[o["path"]] = o.get("md5")
    return [f"{name}: {d['path']}" for name, entry in lock["stages"].items() for d in entry.get("deps", [])
            if d["path"] in outs and d.get("md5") != outs[d["path"]]]


def _lock_param(entry: dict, section: str, key: str):
    """A param's value in a dvc.lock entry: under its section (`sft: {...}`) or dotted (`sample.k`)."""
    params = entry["params"]["params.yaml"]
    return params[section][key] if section in params else params[f"{section}.{key}"]


def test_two_queued_experiments_in_parallel(repo):
    """`dvc queue start -j 2`: two experiments of the whole tiny graph run at once (each in its own
    temp copy of the repo, both logging into the one sqlite MLflow store): both succeed; each
    experiment's lock is consistent with itself and carries its own params (no experiment read the
    other's outputs); MLflow holds one FINISHED run per stage each experiment ran (none dropped by
    a locked database); the workspace is untouched."""
    from mlflow.tracking import MlflowClient

    repo, _ = repo
    sh(repo, "git", "add", "-A")
    sh(repo, "git", "commit", "-qm", "before the queue", check=False)
    # the workspace as the earlier tests left it (test_exp_run_with_param_override ran up to select
    # with sample.k=3): the queue must leave it exactly so
    status_before = dvc(repo, "status").stdout
    git_before = sh(repo, "git", "status", "--porcelain").stdout
    # the tiny random teacher's G/W do not move with the temperature (select's outputs stay the same),
    # so each experiment also trains with its own learning rate: sampling and SFT both run twice at once
    temps = {"t-high": 0.9, "t-low": 0.7}
    lrs = {"t-high": 3e-4, "t-low": 1e-4}
    for name, t in temps.items():
        dvc(repo, "exp", "run", "--queue", "--name", name, "-S", f"sample.temperature={t}",
            "-S", f"sft.learning_rate={lrs[name]}")
    t0 = time.time()
    dvc(repo, "queue", "start", "-j", "2")
    status = ""
    while time.time() - t0 < 2400:
        status = dvc(repo, "queue", "status").stdout
        if not any(word in status for word in ("Running", "Queued")):
            break
        time.sleep(10)
    wall = time.time() - t0
    print(f"two queued experiments, -j 2: {wall:.0f}s\n{status}")
    logs = {name: dvc(repo, "queue", "logs", name, check=False).stdout for name in temps}
    for name in temps:
        assert re.search(rf"{name}\s.*Success", status), (status, logs[name][-3000:])

    ran = {name: [line.split("'")[1] for line in logs[name].splitlines() if line.startswith("Running stage")]
           for name in temps}
    for name in temps:
        assert any(s.startswith("sample@") for s in ran[name]) and any(s.startswith("sft@") for s in ran[name]), ran
    shown = json.loads(dvc(repo, "exp", "show", "--json").stdout)
    revs = {e["name"]: e["rev"] for row in shown for e in (row.get("experiments") or [])
            for e in [e["revs"][0]] if e.get("name") in temps}
    assert set(revs) == set(temps), shown
    sample_md5 = {}
    for name, rev in revs.items():
        lock = yaml.safe_load(sh(repo, "git", "show", f"{rev}:dvc.lock").stdout)
        assert _lock_is_self_consistent(lock) == [], name
        stage = lock["stages"]["sample@countdown-0"]
        assert _lock_param(stage, "sample", "temperature") == temps[name]
        sample_md5[name] = [o["md5"] for o in stage["outs"]]
        sft = lock["stages"]["sft@countdown-H"]
        assert _lock_param(sft, "sft", "learning_rate") == lrs[name]
    assert sample_md5["t-high"] != sample_md5["t-low"]

    client = MlflowClient(tracking_uri=f"sqlite:///{repo}/mlflow.db")
    exp = client.get_experiment_by_name("cotshape")
    runs = [r for r in client.search_runs([exp.experiment_id], max_results=5000)
            if r.info.start_time >= t0 * 1000]
    assert all(r.info.status == "FINISHED" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    # one run per stage outside SFT; SFT logs one run per training run (a set with no examples, as G
    # of the random teacher, none): the same runs in both experiments, each with its own learning rate
    others = [r for r in runs if not r.info.run_name.startswith("sft@")]
    assert len(others) == sum(1 for v in ran.values() for s in v if not s.startswith("sft")), (others, ran)
    sft_runs = {lr: sorted(r.info.run_name for r in runs if r.info.run_name.startswith("sft@")
                           and r.data.params.get("sft.learning_rate") == str(lr)) for lr in lrs.values()}
    assert sft_runs[3e-4] and sft_runs[3e-4] == sft_runs[1e-4], sft_runs
    assert sum(map(len, sft_runs.values())) == len(runs) - len(others)
    logged = sorted(r.data.params.get("sample.temperature") for r in runs if r.info.run_name.startswith("sample@"))
    assert logged == ["0.7", "0.9"], logged
    assert dvc(repo, "status").stdout == status_before
    assert sh(repo, "git", "status", "--porcelain").stdout == git_before
