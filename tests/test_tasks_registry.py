"""The task registry: names, suggestions for unknown names, duplicates, sources and splits."""

from __future__ import annotations

import pytest
from conftest import REPO_ROOT

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


# ---- tasks from outside the package ---------------------------------------------------------

@pytest.fixture
def isolated_registry():
    """Registry and import state restored after the test (an external task stays out of the others)."""
    import sys

    from cotshape.tasks import load_plugins
    from cotshape.tasks.registry import REGISTRY

    list_tasks()
    saved = dict(REGISTRY)
    load_plugins.cache_clear()  # the test's own entry points are looked up
    before = set(sys.modules)
    yield
    REGISTRY.clear()
    REGISTRY.update(saved)
    load_plugins.cache_clear()
    for name in set(sys.modules) - before:
        if name.startswith(("mytasks", "cotshape_plugin_")):
            del sys.modules[name]


def _readme_block(after: str, lang: str) -> str:
    import re

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding a task"):]
    blocks = re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)
    return next(b for b in blocks if b.startswith(after))


def test_readme_task_walkthrough(tmp_path, monkeypatch, isolated_registry):
    """README's "Adding a task" code, as a user would save it, registers through base.task_modules
    with params validation, loads, and verifies right, wrong and unparseable answers."""
    import yaml

    from cotshape.core.config import load_params

    (tmp_path / "mytasks").mkdir()
    (tmp_path / "mytasks" / "__init__.py").write_text("")
    (tmp_path / "mytasks" / "parity.py").write_text(_readme_block("# mytasks/parity.py", "python"))
    snippet = yaml.safe_load(_readme_block("# params.yaml", "yaml"))
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["base"].update(snippet["base"])
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownTaskError):
        get_task("parity")  # not before its module is named
    p = load_params(tmp_path / "params.yaml")
    assert p.base.tasks == ["parity"]
    task = get_task("parity")
    train, test = task.load("train", limit=20), task.load("test", limit=20)
    assert len(train) == 20 and not {x["question"] for x in train} & {x["question"] for x in test}
    prob = train[0]
    assert task.verify(prob, task.human_completion(prob)).correct
    wrong = "odd" if prob["answer"] == "even" else "even"
    assert not task.verify(prob, f"So the answer is {wrong}.").correct
    assert not task.verify(prob, "I am not sure.").parsed


def test_task_module_that_cannot_be_imported_names_the_key(tmp_path, monkeypatch, isolated_registry):
    import yaml

    from cotshape.core.config import load_params

    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["base"]["task_modules"] = ["mytasks.nope"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UnknownTaskError, match=r"base.task_modules\[0\]: cannot import 'mytasks.nope'"):
        load_params(tmp_path / "params.yaml")


def test_installed_plugin_registers_through_its_entry_point(tmp_path, monkeypatch, isolated_registry):
    """A distribution on sys.path that declares the ``cotshape.tasks`` entry point group."""
    pkg = tmp_path / "cotshape_plugin_demo"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from cotshape.tasks import Task, register\n\n"
        "@register\nclass Demo(Task):\n    name = 'plugin-demo'\n")
    dist = tmp_path / "cotshape_plugin_demo-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cotshape-plugin-demo\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[cotshape.tasks]\ndemo = cotshape_plugin_demo\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin-demo" in list_tasks()
    assert get_task("plugin-demo").name == "plugin-demo"
