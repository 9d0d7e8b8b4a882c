"""MLflow tracking against a real ``mlflow server`` on loopback, and a dead server."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from cotshape.tracking import Tracker, git_commit, run_tags

MLFLOW = Path(sys.executable).with_name("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real mlflow server (sqlite backend, proxied artifacts) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(
        [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        cwd=root, stdout=log, stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    try:
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_run_params_loss_series_and_artifact_reach_the_server(mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    artifact = tmp_path / "gsm8k-G.json"
    artifact.write_text('{"accuracy": 0.5}\n')
    tracker = Tracker("cotshape-test", mlflow_server)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "unreachable" warning
        with tracker.run("sft@gsm8k-G", tags=run_tags(task="gsm8k", set="G", student="s", teacher="t"),
                         params={"sft": {"method": "lora", "epochs": 2}}) as run:
            for step, loss in enumerate([2.5, 2.1, 1.8], 1):
                run.log_metrics({"loss": loss}, step=step)
            run.log_metrics({"accuracy": 0.5, "note": "not a number"})
            run.log_artifact(artifact)
    client = MlflowClient(mlflow_server)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "sft@gsm8k-G"
    assert got.data.params == {"sft.method": "lora", "sft.epochs": "2"}
    assert got.data.tags["task"] == "gsm8k" and got.data.tags["set"] == "G"
    assert got.data.tags["git_commit"] == git_commit() and "dvc_rev" in got.data.tags
    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(1, 2.5), (2, 2.1), (3, 1.8)]
    assert got.data.metrics["accuracy"] == 0.5 and "note" not in got.data.metrics
    assert [a.path for a in client.list_artifacts(run.run_id)] == ["gsm8k-G.json"]


def test_trainer_callback_sends_stepwise_loss(mlflow_server, monkeypatch):
    """The callback path train_sft uses: on_log -> the run's loss series."""
    from mlflow.tracking import MlflowClient
    from transformers import TrainerControl, TrainerState, TrainingArguments

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker("cotshape-test", mlflow_server)
    with tracker.run("cb") as run:
        cb = run.callback()
        state = TrainerState()
        args = TrainingArguments(output_dir="unused", use_cpu=True, report_to="none")
        for step, loss in [(1, 3.0), (2, 2.0)]:
            state.global_step = step
            cb.on_log(args, state, TrainerControl(), logs={"loss": loss, "learning_rate": 1e-4})
    history = MlflowClient(mlflow_server).get_metric_history(run.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 3.0), (2, 2.0)]


def test_env_uri_overrides_param(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/elsewhere.db")
    assert Tracker("x", "sqlite:///mlflow.db").uri == "sqlite:////tmp/elsewhere.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert Tracker("x").uri == "sqlite:///mlflow.db"


def test_dead_server_warns_once_and_is_a_noop(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(var, raising=False)
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    start = time.time()
    with pytest.warns(RuntimeWarning) as caught:
        tracker = Tracker("cotshape-test", uri, fallback_dir=tmp_path / "local")
        for name in ("a", "b"):
            with tracker.run(name, tags={"task": "gsm8k"}, params={"lr": 1}) as run:
                run.log_metrics({"loss": 1.0}, step=1)
                run.log_artifact(tmp_path)
                run.callback().on_log(None, _State(), None, logs={"loss": 0.5})
    assert time.time() - start < 60
    unreachable = [w for w in caught if "unreachable" in str(w.message)]
    assert len(unreachable) == 1 and uri in str(unreachable[0].message)
    assert str(tmp_path / "local") in str(unreachable[0].message)
    assert run.run_id is None and run.history["metrics"][0] == {"step": 1, "loss": 1.0}
    assert (tmp_path / "local" / "a.json").exists() and (tmp_path / "local" / "b.json").exists()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"


class _State:
    is_world_process_zero = True
    global_step = 1


def test_run_is_marked_failed_when_the_block_raises(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracker = Tracker("cotshape-test", uri)
    with pytest.raises(KeyError), tracker.run("boom") as run:
        raise KeyError("stage failed")
    assert MlflowClient(uri).get_run(run.run_id).info.status == "FAILED"


def test_git_commit_outside_a_repo_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"


def test_unreachable_sqlite_store_costs_seconds_and_warns_once(tmp_path, monkeypatch):
    """MLflow's SQL engine retries an unopenable database for ~100 s; the preflight refuses it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/no/such/folder/mlflow.db"
    start = time.time()
    with pytest.warns(RuntimeWarning) as caught:
        tracker = Tracker("cotshape-test", uri)
        for name in ("a", "b"):
            with tracker.run(name) as run:
                run.log_metrics({"loss": 1.0})
    assert time.time() - start < 5
    msgs = [str(w.message) for w in caught if "unreachable" in str(w.message)]
    assert len(msgs) == 1 and "does not exist" in msgs[0]
    assert run.run_id is None


@pytest.mark.parametrize("scheme", ["http", "postgresql"])
def test_silent_or_refusing_network_store_is_bounded(tmp_path, monkeypatch, scheme):
    """A port that accepts but never answers (http) is cut at CONNECT_TIMEOUT; a closed port
    (postgresql, a scheme whose driver is not even installed) fails the TCP probe at once."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    if scheme == "http":
        listener.listen(8)  # accepts connections in the kernel's backlog; never replies
        uri = f"http://127.0.0.1:{port}"
    else:
        uri = f"postgresql://u:p@127.0.0.1:{port}/db"  # bound, not listening: refused
    try:
        start = time.time()
        with pytest.warns(RuntimeWarning, match="unreachable"):
            tracker = Tracker("cotshape-test", uri)
            with tracker.run("a") as run:
                run.log_metrics({"loss": 1.0})
        assert time.time() - start < 5 + 1
        assert run.run_id is None
    finally:
        listener.close()


def test_runs_of_killed_stages_end_as_killed_on_the_next_start(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path}/m.db"
    tracker = Tracker("cotshape-test", uri)
    client = MlflowClient(uri)
    exp_id = tracker._connect()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is free now
    host = socket.gethostname()

    def leftover(pid: int, on_host: str = host) -> str:
        return client.create_run(exp_id, run_name="killed", tags={"cotshape.host": on_host,
                                                                  "cotshape.pid": str(pid)}).info.run_id

    stale = leftover(dead.pid)
    alive = leftover(os.getppid())  # a live process: a stage still running
    elsewhere = leftover(dead.pid, on_host=host + "-other")  # cannot be judged from here
    with tracker.run("next") as run:
        pass
    assert client.get_run(stale).info.status == "KILLED"
    assert client.get_run(stale).data.tags["cotshape.killed_by"] == run.run_id
    assert client.get_run(alive).info.status == "RUNNING"
    assert client.get_run(elsewhere).info.status == "RUNNING"
    assert client.get_run(run.run_id).info.status == "FINISHED"
