"""cotshape.pipeline.depgraph: each stage's library files from the import graph, and the dvc.yaml fixer.

Fast: ast only, no model, no DVC run. The first test is the guard for the repository itself:
every stage of dvc.yaml depends on the fingerprint of its script (code/X.txt: the script and
every cotshape file it runs), and on no code dep a fingerprint already stands for.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from cotshape.pipeline import depgraph
from cotshape.pipeline.depgraph import (
    DYNAMIC_IMPORTS,
    REPO_ROOT,
    dynamic_import_sites,
    extra_deps,
    missing_deps,
    module_files,
    stage_code_deps,
    write_deps,
)

DVC_YAML = REPO_ROOT / "dvc.yaml"


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


# --------------------------------------------------------------------------------------------
# the repository's own dvc.yaml


def test_real_dvc_yaml_depends_on_exactly_the_code_each_stage_runs():
    fix = "fix with: python -m cotshape.pipeline.depgraph --write dvc.yaml"
    assert missing_deps(DVC_YAML) == {}, fix
    assert extra_deps(DVC_YAML) == {}, fix
    code = yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"]["code"]
    assert code["deps"] == ["cotshape", "stages"]
    assert code["cmd"] == "python -m cotshape.pipeline.depgraph --fingerprint code"


def test_select_code_reruns_select_but_not_sampling():
    deps = stage_code_deps(DVC_YAML)
    assert "cotshape/data/select.py" in deps["select"]
    assert "cotshape/data/sampling.py" in deps["sample"]
    assert "cotshape/data/select.py" not in deps["sample"]
    assert "cotshape/data/select.py" in module_files("stages/select_gw.py")
    assert "cotshape/data/select.py" not in module_files("stages/sample.py")


def test_every_dynamic_import_site_is_in_the_table():
    # a file that loads code by a computed name hides edges from ast: it must be read and listed
    stage_scripts = sorted(p.relative_to(REPO_ROOT) for p in (REPO_ROOT / "stages").glob("*.py"))
    assert dynamic_import_sites(extra=stage_scripts) == sorted(DYNAMIC_IMPORTS)


def test_builtin_tasks_and_backends_loaded_inside_functions_are_followed():
    files = module_files("stages/sample.py")
    for f in ("cotshape/tasks/countdown.py", "cotshape/tasks/gsm8k.py", "cotshape/tasks/math.py",
              "cotshape/tasks/mbpp.py", "cotshape/generation/transformers_backend.py"):
        assert f in files


# --------------------------------------------------------------------------------------------
# the import graph, on a synthetic package

SYNTHETIC = {
    "stages/run.py": """\
        import json
        import cotshape_tools
        from cotshape.core import run

        def main():
            import cotshape.sub
            from cotshape.other import thing, CONSTANT
        """,
    "cotshape_tools.py": "",
    "cotshape/__init__.py": '"""pkg"""\n',
    "cotshape/core.py": "from .util import helper\n\ndef run():\n    return helper()\n",
    "cotshape/util.py": "import cotshape.core  # a cycle\n\ndef helper():\n    return 1\n",
    "cotshape/sub/__init__.py": "from . import leaf\n",
    "cotshape/sub/leaf.py": "def f():\n    from ..deep.mod import x\n    return x\n",
    "cotshape/deep/__init__.py": "",
    "cotshape/deep/mod.py": "x = 1\n",
    "cotshape/other/__init__.py": "CONSTANT = 2\n",
    "cotshape/other/thing.py": "",
    "cotshape/unused.py": "import cotshape.core\n",
}


def test_module_files_follows_function_level_relative_and_package_imports(tmp_path):
    _tree(tmp_path, SYNTHETIC)
    assert module_files("stages/run.py", root=tmp_path) == [
        "cotshape/__init__.py",
        "cotshape/core.py",
        "cotshape/deep/__init__.py",
        "cotshape/deep/mod.py",
        "cotshape/other/__init__.py",
        "cotshape/other/thing.py",
        "cotshape/sub/__init__.py",
        "cotshape/sub/leaf.py",
        "cotshape/util.py",
    ]


def test_import_of_a_submodule_brings_its_package_inits(tmp_path):
    _tree(tmp_path, {**SYNTHETIC, "stages/run.py": "import cotshape.deep.mod\n"})
    assert module_files("stages/run.py", root=tmp_path) == [
        "cotshape/__init__.py", "cotshape/deep/__init__.py", "cotshape/deep/mod.py"]


def test_dynamic_import_table_adds_modules_loaded_by_name(tmp_path, monkeypatch):
    _tree(tmp_path, {
        "stages/run.py": "from cotshape import loader\n",
        "cotshape/__init__.py": "",
        "cotshape/loader.py": "import importlib\n\ndef load(n):\n    return importlib.import_module(n)\n",
        "cotshape/plugin.py": "",
    })
    assert dynamic_import_sites(root=tmp_path) == ["cotshape/loader.py"]
    assert "cotshape/plugin.py" not in module_files("stages/run.py", root=tmp_path)
    monkeypatch.setitem(depgraph.DYNAMIC_IMPORTS, "cotshape/loader.py", ("cotshape.plugin",))
    assert module_files("stages/run.py", root=tmp_path) == [
        "cotshape/__init__.py", "cotshape/loader.py", "cotshape/plugin.py"]


# --------------------------------------------------------------------------------------------
# --check / --write on a literal dvc.yaml

BEFORE = """\
# the graph (a comment that must survive)
stages:
  one:
    cmd: python stages/one.py --out out.txt  # why this command
    deps:
      - stages/one.py  # the script
      - cotshape/unused.py
      - data/in.txt  # data stays put
    outs:
      - out.txt

  many:
    foreach: [a, b]
    do:
      cmd: >-
        python stages/two.py --item ${item}
        --out out-${item}.txt
      deps:
        - data/${item}.txt
        - stages/two.py
      outs:
        - out-${item}.txt

  grid:
    matrix:
      x: [1, 2]
    cmd: python -m cotshape.deep.mod ${item.x}
    deps:
      - cotshape/deep/mod.py
    outs:
      - grid-${item.x}.txt
  shell:
    cmd: echo hi > hi.txt
    outs:
      - hi.txt
"""

AFTER = """\
# the graph (a comment that must survive)
stages:
  one:
    cmd: python stages/one.py --out out.txt  # why this command
    deps:
      - code/one.txt
      - data/in.txt  # data stays put
    outs:
      - out.txt

  many:
    foreach: [a, b]
    do:
      cmd: >-
        python stages/two.py --item ${item}
        --out out-${item}.txt
      deps:
        - code/two.txt
        - data/${item}.txt
      outs:
        - out-${item}.txt

  grid:
    matrix:
      x: [1, 2]
    cmd: python -m cotshape.deep.mod ${item.x}
    deps:
      - cotshape/__init__.py
      - cotshape/deep/__init__.py
      - cotshape/deep/mod.py
    outs:
      - grid-${item.x}.txt
  shell:
    cmd: echo hi > hi.txt
    outs:
      - hi.txt
"""


@pytest.fixture
def project(tmp_path):
    _tree(tmp_path, {
        **{k: v for k, v in SYNTHETIC.items() if k.startswith("cotshape/")},
        "stages/one.py": "from cotshape.core import run\n",
        "stages/two.py": "def main():\n    import cotshape.sub\n",
        "dvc.yaml": BEFORE,
    })
    return tmp_path


def test_missing_and_extra_per_stage(project):
    dvc = project / "dvc.yaml"
    # a stages/ script needs its fingerprint; a `python -m` module its package files
    assert missing_deps(dvc) == {
        "one": ["code/one.txt"],
        "many": ["code/two.txt"],
        "grid": ["cotshape/__init__.py", "cotshape/deep/__init__.py"],
    }
    # the script and package files a fingerprint stands for are redundant columns
    assert extra_deps(dvc) == {"one": ["stages/one.py", "cotshape/unused.py"], "many": ["stages/two.py"]}
    assert stage_code_deps(dvc)["shell"] == []


def test_a_stage_on_the_whole_package_folder_needs_nothing_else(project):
    dvc = project / "dvc.yaml"
    dvc.write_text(BEFORE.replace("      - cotshape/deep/mod.py\n", "      - cotshape\n"))
    assert "grid" not in missing_deps(dvc) and "grid" not in extra_deps(dvc)


def test_fingerprints_change_exactly_with_the_code_a_script_runs(project):
    (project / "stages" / "run.py").write_text("import cotshape.deep.mod\n")
    written = depgraph.write_fingerprints("code", root=project)
    assert sorted(written) == ["code/one.txt", "code/run.txt", "code/two.txt"]
    one = (project / "code" / "one.txt").read_text()
    assert [line.split()[1] for line in one.splitlines()[1:]] == [
        "stages/one.py", "cotshape/__init__.py", "cotshape/core.py", "cotshape/util.py"]
    assert depgraph.write_fingerprints("code", root=project) == []  # unchanged code: untouched files
    (project / "cotshape" / "util.py").write_text("def helper():\n    return 2\n")
    (project / "stages" / "run.py").unlink()
    assert depgraph.write_fingerprints("code", root=project) == ["code/one.txt"]  # two.py does not run util
    assert (project / "code" / "one.txt").read_text() != one
    assert not (project / "code" / "run.txt").exists()  # the script is gone, so is its fingerprint


# the synthetic project's own ``cotshape`` package must not shadow the real one that runs the CLI
# (depgraph imports cotshape.core.records / .hashing): no working directory first on sys.path
_REAL_COTSHAPE = {"PYTHONSAFEPATH": "1"}


def test_fingerprint_cli_writes_into_the_working_directory(project):
    proc = subprocess.run([sys.executable, "-m", "cotshape.pipeline.depgraph", "--fingerprint", "code"],
                          cwd=project, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **_REAL_COTSHAPE})
    assert proc.returncode == 0, proc.stderr
    assert (project / "code" / "two.txt").is_file()
    assert "stages/two.py" in (project / "code" / "two.txt").read_text()


def test_write_keeps_comments_and_other_deps_and_check_then_passes(project, capsys):
    dvc = project / "dvc.yaml"
    assert depgraph.main(["--check", str(dvc)]) == 1
    assert "one: extra cotshape/unused.py" in capsys.readouterr().out
    assert depgraph.main(["--write", str(dvc)]) == 0
    assert dvc.read_text() == AFTER
    assert depgraph.main(["--check", str(dvc)]) == 0
    assert write_deps(dvc) == []  # idempotent: nothing left to change


def test_cli_runs_as_a_module(project):
    proc = subprocess.run([sys.executable, "-m", "cotshape.pipeline.depgraph", "--check", "dvc.yaml"],
                          cwd=project, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **_REAL_COTSHAPE})
    assert proc.returncode == 1, proc.stderr
    assert "many: missing code/two.txt" in proc.stdout


def test_write_refuses_a_file_a_round_trip_would_reformat(project):
    dvc = project / "dvc.yaml"
    odd = BEFORE.replace("      - stages/one.py  # the script", "      -   stages/one.py  # the script")
    dvc.write_text(odd)
    with pytest.raises(RuntimeError, match="round trip"):
        write_deps(dvc)
    assert dvc.read_text() == odd


def test_write_refuses_to_drop_a_comment_that_hangs_on_a_removed_dep(project):
    dvc = project / "dvc.yaml"
    text = BEFORE.replace("      - data/in.txt  # data stays put\n", "").replace(
        "      - cotshape/unused.py\n", "      - cotshape/unused.py\n\n    # about the outs\n")
    dvc.write_text(text)
    with pytest.raises(RuntimeError, match="edit those deps by hand"):
        write_deps(dvc)
    assert dvc.read_text() == text


def test_atomic_write_keeps_the_mode_and_the_bytes(project):
    # a new fingerprint: 0o644 (not mkstemp's private 0o600), exactly the text of fingerprint()
    assert "code/one.txt" in depgraph.write_fingerprints("code", root=project)
    new = project / "code" / "one.txt"
    assert new.read_bytes() == depgraph.fingerprint("stages/one.py", root=project).encode()
    assert new.stat().st_mode & 0o777 == 0o644
    # a rewritten dvc.yaml keeps its permission bits
    old = project / "dvc.yaml"
    old.chmod(0o664)
    assert write_deps(old)
    assert old.read_text() == AFTER and old.stat().st_mode & 0o777 == 0o664
    assert sorted(p.name for p in project.iterdir()) == ["code", "cotshape", "dvc.yaml", "stages"]  # no temp left
    assert sorted(p.name for p in new.parent.iterdir()) == ["one.txt", "two.txt"]
