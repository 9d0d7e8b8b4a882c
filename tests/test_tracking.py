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

from cotshape.tracking.tracker import Tracker, git_commit, run_tags

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
        from mlflow.tracking import MlflowClient

        # the first API request of a fresh server can outlast the trackers' 5 s connect deadline
        MlflowClient(url).search_experiments()
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
    exp_id = tracker.connect()
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


# --- one run per stage (issue 13 item 3) -------------------------------------------------------

def _md5(path) -> str:
    import hashlib

    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def _table(client, run_id, name="generations.json") -> list[dict]:
    """The rows of a table artifact logged with ``log_table``."""
    import json

    local = client.download_artifacts(run_id, name)
    doc = json.loads(Path(local).read_text())
    return [dict(zip(doc["columns"], row, strict=True)) for row in doc["data"]]


def test_path_hash_is_dvcs_md5_and_falls_back_to_stat(tmp_path):
    import hashlib
    import json

    from cotshape.tracking.hashes import path_hash

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bee\n")
    (tmp_path / "d" / "sub" / "a.txt").write_text("ay\n")
    assert path_hash(tmp_path / "d" / "b.txt") == ("md5", _md5(tmp_path / "d" / "b.txt"))
    entries = [{"md5": _md5(tmp_path / "d" / "b.txt"), "relpath": "b.txt"},
               {"md5": _md5(tmp_path / "d" / "sub" / "a.txt"), "relpath": "sub/a.txt"}]
    want = hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir"
    assert path_hash(tmp_path / "d") == ("md5", want)  # the same recipe gives dvc.lock's folder hashes
    kind, stat = path_hash(tmp_path / "d", max_bytes=5)  # too big for a quick md5: the file listing
    assert kind == "stat" and stat != want[:32]
    (tmp_path / "d" / "b.txt").write_text("bee!\n")
    assert path_hash(tmp_path / "d", max_bytes=5)[1] != stat
    assert path_hash(tmp_path / "missing") is None


def test_stage_run_tags_params_inputs_table_and_outputs(mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from cotshape.core.config import SECTIONS, Params
    from cotshape.sft.params import SFTParams
    from cotshape.tracking.stage_run import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    p = Params(**{k: SFTParams() if k == "sft" else cls() for k, cls in SECTIONS.items()})  # the defaults
    data = tmp_path / "G.jsonl"
    data.write_text("".join(f'{{"id": "g-{i}", "problem_id": "p{i}", "completion": "{"x" * 3000}", '
                            f'"correct": true, "extracted": "{i}"}}\n' for i in range(25)))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    out = tmp_path / "out.json"
    long = {f"k{i}": i for i in range(150)}  # > MLflow's 100 params per batch
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        with stage_run("sft", p, task="gsm8k", set="G", sections=("base.seed", "sft"), inputs=[data, model],
                       outputs=[out], datasets={str(data): "training"}, tags={"note": "y" * 9000}) as run:
            run.log_params({"extra": long, "huge": "z" * 7000})
            run.log_generations([__import__("json").loads(x) for x in data.read_text().splitlines()], set="G")
            run.log_metrics({"nested": {"acc": 0.5}})
            out.write_text('{"ok": 1}\n')
    client = MlflowClient(mlflow_server)
    got = client.get_run(run.run_id)
    tags, params = got.data.tags, got.data.params
    assert got.info.run_name == "sft@gsm8k-G" and got.info.status == "FINISHED"
    assert (tags["stage"], tags["task"], tags["set"]) == ("sft", "gsm8k", "G")
    assert tags[f"input.{data.as_posix()}.md5"] == _md5(data)
    assert f"input.{model.as_posix()}.md5" in tags and tags[f"output.{out.as_posix()}.md5"] == _md5(out)
    assert len(tags["note"]) == 8000  # cut at MLflow's tag limit, not an error
    assert params["base.seed"] == str(p.base.seed) and params["sft.learning_rate"] == str(p.sft.learning_rate)
    assert params["sft.method"] == p.sft.method and "tracking.experiment" not in params
    assert params["extra.k149"] == "149" and len(params["huge"]) == 6000
    assert got.data.metrics["nested.acc"] == 0.5
    (ds,) = got.inputs.dataset_inputs
    assert ds.dataset.name == str(data) and ds.dataset.digest == _md5(data)
    assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "training"
    assert __import__("json").loads(ds.dataset.profile)["num_rows"] == 25
    rows = _table(client, run.run_id)
    assert len(rows) == 20 and rows[0]["prompt_id"] == "g-0" and rows[0]["set"] == "G"
    assert rows[0]["correct"] is True and rows[0]["extracted"] == "0"
    assert len(rows[0]["completion"]) == 2003  # 2,000 characters and "..."


def test_stage_run_failed_has_no_output_hashes(mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from cotshape.tracking.stage_run import begin_stage, end_stage_runs

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "x.json"
    out.write_text("{}")
    run = begin_stage("verify", task="gsm8k", outputs=[out])
    end_stage_runs(ValueError("boom"))
    got = MlflowClient(mlflow_server).get_run(run.run_id)
    assert got.info.status == "FAILED" and not any(k.startswith("output.") for k in got.data.tags)


def test_unreachable_store_stage_run_is_a_fast_noop(tmp_path, monkeypatch):
    from cotshape.tracking.run_file import write_run_file
    from cotshape.tracking.stage_run import stage_run

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/no/such/folder/m.db")
    big = tmp_path / "big.bin"
    big.write_bytes(b"\0" * (1 << 20))
    start = time.time()
    with pytest.warns(RuntimeWarning, match="unreachable"), \
            stage_run("evaluate", task="gsm8k", set="G", inputs=[big], outputs=[big]) as run:
        run.log_generations([{"id": "a", "completion": "c"}])
        run.log_dataset(big)
    assert time.time() - start < 5 and run.run_id is None
    assert not any(k.startswith("input.") for k in run.history["tags"])  # nothing hashed for nobody
    assert write_run_file(tmp_path, run) is None and not (tmp_path / "mlflow_run.json").exists()


# --- the stage scripts, in process, against the loopback server ----------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _stage(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_stage_{name}", ROOT / "stages" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.fixture(scope="module")
def stage_runs(mlflow_server, tiny_model_dir, tmp_path_factory):
    """prepare -> verify (hand-written samples) -> select -> paraphrase -> sft (H) -> evaluate
    (the SFT folder) on a tiny model, each stage script's main() in this process, tracked on the
    loopback server in a fresh experiment. Returns (experiment name, work folder)."""
    import yaml

    import cotshape.pipeline.stage as pipeline

    work = tmp_path_factory.mktemp("stages")
    experiment = f"stages-{work.name}"
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(tasks=["gsm8k"], teacher=str(tiny_model_dir), student=str(tiny_model_dir),
                          device="cpu", dtype="float32", prompt_format="chat")
    params["prepare"].update(train_size=4, test_size=3)
    params["paraphrase"].update(max_new_tokens=8, retries=0)
    params["sample"].update(batch_size=8, k=2, max_new_tokens=8, shots=0, shards=[0])
    params["degrade"].update(flawed_source="corrupt", flawed_fractions=[0.5], step_k=[1])
    params["sft"].update(runs=2, runs_by_set={}, epochs=1, batch_size=2, max_steps=2, method="lora", dtype="float32")
    params["evaluate"].update(max_new_tokens=8, batch_size=8)
    params["select"].update(max_verifier_errors=1.0)
    params["tracking"].update(experiment=experiment)
    params["report"].update(n_boot=100)
    (work / "params.yaml").write_text(yaml.safe_dump(params))
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI",)}
    old_params = pipeline.PARAMS_FILE
    os.environ["MLFLOW_TRACKING_URI"] = mlflow_server
    pipeline.PARAMS_FILE = str(work / "params.yaml")
    w = str(work)
    try:
        assert _stage("models")(["--teacher-out", f"{w}/models/teacher", "--student-out", f"{w}/models/student"]) == 0
        assert _stage("prepare")(["--task", "gsm8k", "--train-out", f"{w}/train.jsonl", "--test-out",
                                  f"{w}/test.jsonl", "--human-out", f"{w}/sets/H.jsonl"]) == 0
        assert _stage("sample")(["--task", "gsm8k", "--shard", "0", "--problems", f"{w}/train.jsonl", "--model",
                                 str(tiny_model_dir), "--out", f"{w}/shards/shard-0.jsonl"]) == 0
        assert _stage("merge_samples")(["--problems", f"{w}/train.jsonl", "--shards-dir", f"{w}/shards",
                                        "--out", f"{w}/gsm8k.jsonl"]) == 0
        import json

        # verify hand-written samples (the tiny model's are gibberish): one right, one wrong per problem
        problems = [json.loads(x) for x in (work / "train.jsonl").read_text().splitlines()]
        samples = [{"id": f"{x['id']}#{j}", "problem_id": x["id"], "sample_index": j, "task": "gsm8k",
                    "prompt": [], "completion": f"The answer is {x['answer'] if j == 0 else -1}.\n#### "
                                                f"{x['answer'] if j == 0 else -1}",
                    "finish_reason": "stop", "num_tokens": 9} for x in problems for j in range(2)]
        (work / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
        assert _stage("verify")(["--task", "gsm8k", "--problems", f"{w}/train.jsonl", "--samples",
                                 f"{w}/samples.jsonl", "--out", f"{w}/verified.jsonl", "--metrics",
                                 f"{w}/verify.json"]) == 0
        assert _stage("select_gw")(["--task", "gsm8k", "--problems", f"{w}/train.jsonl", "--verified",
                                    f"{w}/verified.jsonl", "--sets-dir", f"{w}/sets", "--metrics",
                                    f"{w}/select.json"]) == 0
        assert _stage("paraphrase")(["--task", "gsm8k", "--problems", f"{w}/train.jsonl", "--student",
                                     str(tiny_model_dir), "--teacher", str(tiny_model_dir), "--out",
                                     f"{w}/sets/P.jsonl", "--metrics", f"{w}/paraphrase.json"]) == 0
        assert _stage("degrade")(["--task", "gsm8k", "--problems", f"{w}/train.jsonl", "--good", f"{w}/sets/G.jsonl",
                                  "--teacher", str(tiny_model_dir), "--mix-dir", f"{w}/sets/mix", "--step-dir",
                                  f"{w}/sets/steps", "--ids", f"{w}/sets/ids.json", "--metrics",
                                  f"{w}/degrade.json"]) == 0
        assert _stage("closeness")(["--task", "gsm8k", "--student", str(tiny_model_dir), "--sets-dir", f"{w}/sets",
                                    "--out", f"{w}/closeness.json"]) == 0
        assert _stage("sft")(["--task", "gsm8k", "--set", "H", "--data", f"{w}/sets/H.jsonl", "--student",
                              str(tiny_model_dir), "--out", f"{w}/sft-H", "--metrics", f"{w}/sft.json",
                              "--loss-plot", f"{w}/loss.csv"]) == 0
        assert _stage("evaluate")(["--task", "gsm8k", "--set", "H", "--problems", f"{w}/test.jsonl", "--model",
                                   f"{w}/sft-H", "--out", f"{w}/eval.jsonl", "--metrics", f"{w}/eval.json"]) == 0
        for d in ("metrics", "plots", "evals"):
            (work / d).mkdir()
        assert _stage("report")(["--metrics-dir", f"{w}/metrics", "--plots-dir", f"{w}/plots", "--out-dir",
                                 f"{w}/reports", "--eval-dir", f"{w}/evals", "--sets-dir", f"{w}/sets",
                                 "--claims-out", f"{w}/claims.json", "--summary-out", f"{w}/summary.json"]) == 0
        # a stage that fails: its run ends FAILED
        assert _stage("merge_samples")(["--problems", f"{w}/train.jsonl", "--shards-dir", f"{w}/none",
                                        "--out", f"{w}/gsm8k.jsonl"]) == 2
        yield experiment, work
    finally:
        pipeline.PARAMS_FILE = old_params
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _runs_by_stage(server, experiment) -> dict[str, list]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)
    exp = client.get_experiment_by_name(experiment)
    out: dict[str, list] = {}
    for r in client.search_runs([exp.experiment_id], max_results=1000):
        out.setdefault(r.data.tags.get("stage", "?"), []).append(r)
    return out


def test_each_stage_execution_is_one_tagged_run(mlflow_server, stage_runs):
    from mlflow.tracking import MlflowClient

    experiment, work = stage_runs
    runs = _runs_by_stage(mlflow_server, experiment)
    counts = {k: len(v) for k, v in runs.items()}
    print("MLflow runs per stage:", counts)
    assert counts == {"models": 1, "prepare": 1, "sample": 1, "merge_samples": 2, "verify": 1, "select": 1,
                      "paraphrase": 1, "degrade": 1, "closeness": 1, "sft": 2, "evaluate": 1, "report": 1}
    (report,) = runs.pop("report")
    assert report.info.status == "FINISHED" and report.data.params["report.n_boot"] == "100"
    assert report.data.tags["claim.gsm8k.C1"] and f"output.{work}/claims.json.md5" in report.data.tags
    assert sorted(r.info.status for r in runs.pop("merge_samples")) == ["FAILED", "FINISHED"]
    (models,) = runs.pop("models")
    assert models.info.status == "FINISHED" and models.data.params["base.student"]
    assert f"output.{work}/models/student.md5" in models.data.tags
    assert sorted(r.data.tags["run"] for r in runs.pop("sft")) == ["0", "1"]  # one MLflow run per training run
    for stage, (r,) in runs.items():
        assert r.data.tags["task"] == "gsm8k", stage
        assert r.info.status == "FINISHED", stage
    (verify,) = runs["verify"]
    assert verify.data.tags[f"input.{work}/samples.jsonl.md5"] == _md5(work / "samples.jsonl")
    assert verify.data.tags[f"output.{work}/verified.jsonl.md5"] == _md5(work / "verified.jsonl")
    assert verify.data.metrics["samples"] == 8
    (select,) = runs["select"]
    assert select.data.params["select.balance"] == "True" and "base.seed" in select.data.params
    assert select.data.tags[f"output.{work}/sets/G.jsonl.md5"] == _md5(work / "sets" / "G.jsonl")
    assert runs["prepare"][0].data.params["prepare.train_size"] == "4"
    assert runs["paraphrase"][0].data.tags["set"] == "P"
    (sample,) = runs["sample"]
    assert sample.data.tags["shard"] == "0" and sample.data.params["sample.k"] == "2"
    assert sample.data.tags[f"output.{work}/shards/shard-0.jsonl.md5"] == _md5(work / "shards" / "shard-0.jsonl")
    rows = _table(MlflowClient(mlflow_server), sample.info.run_id)
    assert len(rows) == 8 and all(r["set"] == "samples" and r["sample_index"] in (0, 1) for r in rows)
    (degrade,) = runs["degrade"]
    rows = _table(MlflowClient(mlflow_server), degrade.info.run_id)
    assert {r["set"] for r in rows} >= {"mix-0.5"} and any(r["set"].startswith("step") for r in rows)
    assert f"input.{work}/sets/G.jsonl.md5" in degrade.data.tags
    (closeness,) = runs["closeness"]
    assert any(k.endswith("mean_loss") for k in closeness.data.metrics)
    assert closeness.data.tags[f"input.{work}/sets.md5"].endswith(".dir")


def test_sft_run_params_dataset_and_model_card(mlflow_server, stage_runs):
    import json

    from mlflow.tracking import MlflowClient

    experiment, work = stage_runs
    runs = sorted(_runs_by_stage(mlflow_server, experiment)["sft"], key=lambda r: r.data.tags["run"])
    assert [r.info.run_name for r in runs] == ["sft@gsm8k-H-run-0", "sft@gsm8k-H-run-1"]
    from cotshape.tracking.hashes import path_hash

    for r, sft in enumerate(runs):
        assert sft.data.tags["set"] == "H" and sft.data.params["sft.max_steps"] == "2"
        # the seed SFT really used: base.sft_seed (null: base.seed) + the run's index
        assert int(sft.data.params["sft.seed"]) == int(sft.data.params["base.seed"]) + r
        (ds,) = sft.inputs.dataset_inputs
        assert ds.dataset.digest == _md5(work / "sets" / "H.jsonl")
        assert {t.key: t.value for t in ds.tags}["mlflow.data.context"] == "training"
        folder = work / "sft-H" / f"run-{r}"
        assert json.loads((folder / "mlflow_run.json").read_text())["run_id"] == sft.info.run_id
        # the run file is not part of the result: the output hash leaves it out, like .dvcignore does for DVC
        assert sft.data.tags[f"output.{folder.as_posix()}.md5"] == path_hash(folder)[1]
        card = (folder / "README.md").read_text()
        assert "TRL" in card and f"run-{r}" in card  # TRL's model card, kept
        artifacts = {a.path for a in MlflowClient(mlflow_server).list_artifacts(sft.info.run_id)}
        assert {"README.md", "train_log.json"} <= artifacts


def test_evaluate_run_links_the_sft_run_and_logs_generations(mlflow_server, stage_runs):
    from mlflow.tracking import MlflowClient

    experiment, work = stage_runs
    runs = _runs_by_stage(mlflow_server, experiment)
    (ev,), sft = runs["evaluate"], sorted(runs["sft"], key=lambda r: r.data.tags["run"])
    # every training run it evaluated, in run order
    assert ev.data.tags["cotshape.sft_run_id"] == ",".join(r.info.run_id for r in sft)
    assert ev.data.tags["runs"] == "2"
    # the README's view: the evaluate runs of one task
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name(experiment)
    found = client.search_runs([exp.experiment_id], "tags.task = 'gsm8k' and tags.stage = 'evaluate'")
    assert [r.info.run_id for r in found] == [ev.info.run_id]
    assert ev.data.tags["model"] == f"{work}/sft-H"
    assert any(k.startswith(f"input.{work}/sft-H.") for k in ev.data.tags)
    assert ev.data.params["evaluate.max_new_tokens"] == "8" and "base.dtype" in ev.data.params
    (ds,) = ev.inputs.dataset_inputs
    assert ds.dataset.digest == _md5(work / "test.jsonl")
    rows = _table(MlflowClient(mlflow_server), ev.info.run_id)
    assert len(rows) == 3 and {r["set"] for r in rows} == {"H"} and all(isinstance(r["correct"], bool) for r in rows)
    (para,) = runs["paraphrase"]
    rows = _table(MlflowClient(mlflow_server), para.info.run_id)
    assert len(rows) == 4 and {r["set"] for r in rows} == {"P"}


def test_run_file_is_ignored_once_the_folder_holds_another_model(tmp_path):
    """A dvc checkout of another experiment leaves the (ignored) run file in place: evaluate must
    not link its run to the SFT run of the other model."""
    from cotshape.core.artifacts import SFT_RUN_FILE
    from cotshape.tracking.hashes import path_hash
    from cotshape.tracking.run_file import read_run_file, write_run_file

    class Run:  # the two attributes write_run_file reads from a TrackedRun
        run_id, name = "abc123", "sft@gsm8k-G"
        tracker = type("T", (), {"uri": "sqlite:///m.db", "experiment": "cotshape"})()

    folder = tmp_path / "sft-G"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"weights-1")
    before = path_hash(folder)
    write_run_file(folder, Run())
    assert path_hash(folder) == before  # the run file is left out of the folder's hash
    assert (folder / SFT_RUN_FILE).stat().st_mode & 0o777 == 0o644  # an ordinary file, not mkstemp's 0o600
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_model.safetensors", SFT_RUN_FILE]  # no temp left
    (folder / f".{SFT_RUN_FILE}.abc123.tmp").write_text("{")  # a killed write's temp: not hashed either
    assert path_hash(folder) == before
    (folder / f".{SFT_RUN_FILE}.abc123.tmp").unlink()
    assert read_run_file(folder)["run_id"] == "abc123"
    (folder / "adapter_model.safetensors").write_bytes(b"weights-2")  # another model checked out
    assert (folder / SFT_RUN_FILE).exists() and read_run_file(folder) is None
