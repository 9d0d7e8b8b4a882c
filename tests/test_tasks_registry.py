"""The task registry: names, suggestions for unknown names, duplicates, sources and splits."""

from __future__ import annotations

import pytest

from cotshape.tasks import Task, UnknownTaskError, get_task, list_tasks, register
from cotshape.tasks.base import is_test_key, stable_bucket


def test_list_tasks_has_the_four_tasks():
    assert list_tasks() == ["countdown", "gsm8k", "math", "mbpp"]


def test_get_task_returns_instance_with_its_name():
    assert get_task("countdown").name == "countdown"


def test_unknown_task_suggests_close_names():
    with pytest.raises(UnknownTaskError, match=r"unknown task 'gsm8'.*did you mean 'gsm8k'"):
        get_task("gsm8")


def test_unknown_task_without_close_name_lists_known():
    with pytest.raises(UnknownTaskError, match=r"known: countdown, gsm8k, math, mbpp"):
        get_task("zzzzzz")


def test_duplicate_registration_is_refused():
    list_tasks()

    class Other(Task):
        name = "math"

    with pytest.raises(ValueError, match="already registered"):
        register(Other)


def test_unknown_source_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown source 'nonsense'"):
        get_task("gsm8k").load("train", source="nonsense")


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no 'train' data files"):
        get_task("gsm8k").load("train", source=str(tmp_path))


def test_bad_split_is_refused():
    with pytest.raises(ValueError, match="split must be 'train' or 'test'"):
        get_task("math").load("validation")


def test_bad_limit_is_refused():
    with pytest.raises(ValueError, match="limit must be >= 1"):
        get_task("math").load("train", limit=0)


def test_stable_bucket_is_fixed_across_runs():
    # a literal: the split must not depend on PYTHONHASHSEED or the Python version
    assert stable_bucket("countdown") == stable_bucket("countdown") == 321
    assert is_test_key("x", 1.0) and not is_test_key("x", 0.0)


def test_hub_id_not_cached_offline_is_a_clear_error(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"hub dataset 'openai/gsm8k' \(main/train\) could not be fetched"):
        get_task("gsm8k").load("train", source="hub", limit=2)
