"""Error reporting: the project's own errors are one line, everything else keeps its traceback."""

from __future__ import annotations

import logging

import pytest

from cotshape.core.errors import CotshapeError, configure_logging, did_you_mean
from cotshape.core.records import RecordError, read_jsonl, read_problems
from cotshape.pipeline.stage import stage_main


def test_internal_key_error_keeps_its_traceback():
    # e.g. a SKIPPED.json without "reason": a bug, not a user error; must not become "error: reason"
    @stage_main
    def main(argv=None):
        return {}["reason"]

    with pytest.raises(KeyError, match="reason"):
        main([])


def test_internal_value_error_keeps_its_traceback():
    @stage_main
    def main(argv=None):
        raise ValueError("internal invariant broken")

    with pytest.raises(ValueError, match="internal invariant"):
        main([])


def test_project_error_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("COTSHAPE_DEBUG", raising=False)

    @stage_main
    def main(argv=None):
        raise RecordError("data/x.jsonl:3: missing field(s) completion")

    assert main([]) == 2
    err = capsys.readouterr().err
    assert err == "error: data/x.jsonl:3: missing field(s) completion\n"


def test_debug_env_shows_traceback_of_user_errors(capsys, monkeypatch):
    monkeypatch.setenv("COTSHAPE_DEBUG", "1")

    @stage_main
    def main(argv=None):
        raise RecordError("data/x.jsonl:3: bad")

    assert main([]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: data/x.jsonl:3: bad")


def test_library_user_errors_are_project_errors():
    from cotshape.core.models import resolve_spec
    from cotshape.data.sampling import parse_shard
    from cotshape.tasks import get_task

    for call in (lambda: get_task("gsm9k"), lambda: resolve_spec("no-such-alias"), lambda: parse_shard("3/2"),
                 lambda: parse_shard("x")):
        with pytest.raises(CotshapeError):
            call()
    with pytest.raises(ValueError):  # still ValueErrors for callers that catch those
        get_task("gsm9k")


def test_non_utf8_input_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "caf\xe9"}\n')
    with pytest.raises(RecordError, match=rf"{path}:2: not UTF-8"):
        read_jsonl(path)


def test_deeply_nested_json_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\n' + "[" * 200_000 + "]" * 200_000 + "\n")
    with pytest.raises(RecordError, match=rf"{path}:2: .*nest"):
        read_jsonl(path)


def test_unhashable_problem_id_is_a_record_error(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"id": ["x"], "task": "gsm8k", "question": "q", "answer": "1", "solution": "s", '
                    '"tests": [], "meta": {}}\n')
    with pytest.raises(RecordError, match=rf"{path}:1: field 'id' must be str"):
        read_problems(path)


def test_stage_main_configures_logging(capsys):
    @stage_main
    def main(argv=None):
        logging.getLogger("cotshape.data.sampling").info("resuming, 3 of 4 problems already sampled")

    assert main([]) == 0
    assert "resuming, 3 of 4 problems already sampled" in capsys.readouterr().err


def test_configure_logging_is_idempotent():
    configure_logging()
    configure_logging()
    handlers = [h for h in logging.getLogger("cotshape").handlers if getattr(h, "_cotshape", False)]
    assert len(handlers) == 1


def test_did_you_mean_names_the_close_matches_closest_first():
    assert did_you_mean("sft@z", ["sft", "sft@x", "sft@y", "sample"]) == "did you mean 'sft@y' or 'sft@x' or 'sft'?"
    assert did_you_mean("qqqq", ["sft", "sample"]) == ""
    assert did_you_mean("gsm8", ["countdown", "gsm8k", "math"], n=1) == "did you mean 'gsm8k'?"
    # an alias names its choice, and a choice found twice is named once
    assert did_you_mean("gema-2-2b", ["paper-gemma-2-2b"], aliases={"gemma-2-2b": "paper-gemma-2-2b"}) \
        == "did you mean 'paper-gemma-2-2b'?"
