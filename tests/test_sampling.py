"""The sampling job: records, resume from a partial file, shards and their merge, bad input."""

from __future__ import annotations

import json

import pytest

from cotshape.core.records import RecordError, make_problem, read_jsonl
from cotshape.data.sampling import (
    SAMPLE_FIELDS,
    merge_shards,
    parse_shard,
    partial_path,
    run_sampling,
    shard_problems,
)
from cotshape.generation import SamplingParams, get_backend
from cotshape.tasks.base import Task


class EchoTask(Task):
    """A minimal task: the question is the prompt."""

    name = "echo"
    instruction = "Answer."


PROBLEMS = [make_problem(f"p{i}", "echo", f"Question number {i}: what is {i} + {i}?", str(2 * i), "") for i in range(5)]
PARAMS = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=8, seed=3)


class CountingBackend:
    """Wraps a real backend and records which prompts it was asked for."""

    def __init__(self, inner):
        self.inner, self.calls, self.name = inner, [], inner.name

    def generate(self, prompts, params, progress=None, seeds=None, on_result=None):
        self.calls.extend(p[0]["content"] for p in prompts)
        return self.inner.generate(prompts, params, progress=progress, seeds=seeds, on_result=on_result)


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", batch_size=4)


@pytest.fixture(scope="module")
def full_run(backend, tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "samples.jsonl"
    run_sampling(EchoTask(), PROBLEMS, backend, 2, PARAMS, out, teacher="tiny", show_progress=False)
    return read_jsonl(out)


def test_records_have_the_schema_and_order(full_run):
    assert [r["id"] for r in full_run] == [f"p{i}#{j}" for i in range(5) for j in range(2)]
    r = full_run[0]
    assert set(r) == {*SAMPLE_FIELDS, "backend"} and r["backend"] == "transformers"  # the backend that drew it
    assert r["problem_id"] == "p0" and r["sample_index"] == 0 and r["task"] == "echo" and r["teacher"] == "tiny"
    assert r["prompt"] == EchoTask().chat_messages(PROBLEMS[0])
    assert r["finish_reason"] in ("stop", "length") and 0 < r["num_tokens"] <= 8


def test_output_is_final_and_partial_removed(backend, tmp_path):
    out = tmp_path / "s.jsonl"
    run_sampling(EchoTask(), PROBLEMS[:2], backend, 1, PARAMS, out, teacher="tiny", show_progress=False)
    assert out.exists() and not partial_path(out).exists()


def test_resume_samples_only_what_is_missing(backend, full_run, tmp_path):
    out = tmp_path / "s.jsonl"
    part = partial_path(out)
    from cotshape.data.sampling import fingerprint

    # a first run that finished problems p0, p1 and died while writing p2 (torn last line)
    fp = fingerprint("echo", "tiny", 2, SamplingParams(**{**PARAMS.__dict__, "n": 2}), None, PROBLEMS)
    lines = [json.dumps({"fingerprint": fp, "args": {}})] + [json.dumps(r) for r in full_run[:4]]
    part.write_text("\n".join(lines) + "\n" + json.dumps(full_run[4])[:25])
    again = CountingBackend(backend)
    run_sampling(EchoTask(), PROBLEMS, again, 2, PARAMS, out, teacher="tiny", show_progress=False)
    assert again.calls == [EchoTask().user_prompt(p) for p in PROBLEMS[2:]]
    assert read_jsonl(out) == full_run


def test_partial_from_other_arguments_is_discarded(backend, full_run, tmp_path):
    out = tmp_path / "s.jsonl"
    partial_path(out).write_text(json.dumps({"fingerprint": "other", "args": {}}) + "\n" + json.dumps(full_run[0]) + "\n")
    counting = CountingBackend(backend)
    run_sampling(EchoTask(), PROBLEMS, counting, 2, PARAMS, out, teacher="tiny", show_progress=False)
    assert len(counting.calls) == len(PROBLEMS)


def test_corrupt_line_in_the_middle_is_an_error(backend, full_run, tmp_path):
    from cotshape.data.sampling import fingerprint

    out = tmp_path / "s.jsonl"
    fp = fingerprint("echo", "tiny", 2, SamplingParams(**{**PARAMS.__dict__, "n": 2}), None, PROBLEMS)
    partial_path(out).write_text("\n".join([json.dumps({"fingerprint": fp}), "{broken", json.dumps(full_run[0])]) + "\n")
    with pytest.raises(RecordError, match=r"s.jsonl.partial:2: corrupt record"):
        run_sampling(EchoTask(), PROBLEMS, backend, 2, PARAMS, out, teacher="tiny", show_progress=False)


def test_shards_merge_to_the_full_run(backend, full_run, tmp_path):
    outs = []
    for i in range(2):
        outs.append(tmp_path / f"s{i}.jsonl")
        run_sampling(EchoTask(), PROBLEMS, backend, 2, PARAMS, outs[-1], teacher="tiny", shard=(i, 2), show_progress=False)
    assert [r["problem_id"] for r in read_jsonl(outs[1])] == ["p1", "p1", "p3", "p3"]
    merge_shards(outs, tmp_path / "all.jsonl", problems=PROBLEMS, k=2)
    assert read_jsonl(tmp_path / "all.jsonl") == full_run


def test_merge_refuses_duplicates(full_run, tmp_path):
    from cotshape.core.records import write_jsonl

    write_jsonl(tmp_path / "a.jsonl", full_run[:3])
    write_jsonl(tmp_path / "b.jsonl", full_run[2:])
    with pytest.raises(RecordError, match=r"b.jsonl:1: sample p1#0 already in"):
        merge_shards([tmp_path / "a.jsonl", tmp_path / "b.jsonl"], tmp_path / "all.jsonl")


def test_merge_refuses_missing_samples(full_run, tmp_path):
    from cotshape.core.records import write_jsonl

    write_jsonl(tmp_path / "a.jsonl", full_run[:-1])
    with pytest.raises(RecordError, match=r"1 samples missing .*p4#1"):
        merge_shards([tmp_path / "a.jsonl"], tmp_path / "all.jsonl", problems=PROBLEMS, k=2)
    assert not (tmp_path / "all.jsonl").exists()


def test_shard_selection_is_index_modulo():
    assert [p["id"] for p in shard_problems(PROBLEMS, (2, 3))] == ["p2"]
    assert parse_shard("1/4") == (1, 4)


@pytest.mark.parametrize("text", ["4/4", "-1/2", "1", "a/b"])
def test_bad_shard(text):
    with pytest.raises(ValueError, match="shard"):
        parse_shard(text)


def test_k_zero_is_refused(backend, tmp_path):
    with pytest.raises(ValueError, match="k must be >= 1"):
        run_sampling(EchoTask(), PROBLEMS, backend, 0, PARAMS, tmp_path / "s.jsonl", teacher="tiny")


def test_no_problems_is_refused(backend, tmp_path):
    with pytest.raises(ValueError, match="no problems"):
        run_sampling(EchoTask(), [], backend, 1, PARAMS, tmp_path / "s.jsonl", teacher="tiny")
    assert not (tmp_path / "s.jsonl").exists()


def test_second_run_on_the_same_output_refuses_naming_the_pid(backend, tmp_path):
    import subprocess
    import sys

    from cotshape.core.errors import BusyError

    out = tmp_path / "samples.jsonl"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom cotshape.data.sampling import partial_lock\n"
         f"with partial_lock({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BusyError, match=rf"{out}.partial: .*pid {holder.pid}\b"):
            run_sampling(EchoTask(), PROBLEMS, backend, 2, PARAMS, out, teacher="tiny", show_progress=False)
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    # the lock dies with its holder (kill -9 included): the next run goes ahead
    run_sampling(EchoTask(), PROBLEMS[:1], backend, 1, PARAMS, out, teacher="tiny", show_progress=False)
    assert len(read_jsonl(out)) == 1 and not partial_path(out).exists()
    assert not (tmp_path / "samples.jsonl.partial.lock").exists()


def test_merge_refuses_unhashable_or_mistyped_ids(full_run, tmp_path):
    bad = dict(full_run[0], problem_id=["p0"])
    (tmp_path / "s0.jsonl").write_text(json.dumps(full_run[1]) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(RecordError, match=r"s0\.jsonl:2: problem_id must be a string"):
        merge_shards([tmp_path / "s0.jsonl"], tmp_path / "out.jsonl")
