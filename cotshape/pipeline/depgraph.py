"""Which library files each DVC stage runs, found from the import graph, and a dvc.yaml fixer.

A stage in dvc.yaml lists its script (``stages/X.py``) as a dep, but the script is thin: the
code that decides what the stage writes lives in the ``cotshape`` package. Unless those files
are deps too, a change to, say, ``cotshape/data/select.py`` leaves every stage "up to date". This
module computes, for each stage, the exact set of package files its command runs, and checks
or rewrites the ``deps:`` lists of dvc.yaml to match::

    python -m cotshape.pipeline.depgraph dvc.yaml            # print each stage's library files
    python -m cotshape.pipeline.depgraph --check dvc.yaml    # missing/extra per stage; exit 1 if any
    python -m cotshape.pipeline.depgraph --write dvc.yaml    # make each stage's cotshape/ deps exact

How: the stage's ``python stages/X.py`` (or ``python -m cotshape.x``) is parsed with
:mod:`ast` -- nothing is imported or executed -- and every ``import`` / ``from ... import``
statement anywhere in the file is followed: top-level ones and those inside functions (stage
scripts and the registries import heavy modules lazily), absolute ``cotshape...`` names and
relative imports inside the package. ``import cotshape.a.b`` also brings ``cotshape/__init__.py``
and ``cotshape/a/__init__.py`` (Python runs package ``__init__`` files), and ``from cotshape.a
import b`` brings ``cotshape/a/b.py`` when ``b`` is a submodule. The closure is transitive.

Known limits of static analysis (the result is a safe over-approximation for the first two,
and kept honest by a test for the rest):

- every import statement counts, even one on a branch that never runs (``if TYPE_CHECKING:``,
  a backend that is not chosen): a change to such a file reruns the stage for nothing;
- ``from cotshape.x import *`` does not follow ``__all__`` into submodules;
- code loaded by a name computed at run time (``importlib.import_module(name)``, ``__import__``,
  ``runpy``, a ``sys.executable`` subprocess) is invisible to ``ast``. Every package file that
  does such a thing must be listed in :data:`DYNAMIC_IMPORTS` with the package modules it loads
  that way; ``tests/test_depgraph.py`` fails when a file does it without being listed, or is
  listed without doing it;
- only files of the one package (``cotshape``) are followed, not third-party or stdlib code,
  and not data files a module reads (``cotshape/...`` non-Python files are not found).

Standard library only (plus the stdlib-only ``cotshape.core.records`` atomic writer and
``cotshape.core.hashing`` md5), except :func:`write_deps` / ``--write`` / dvc.yaml reading, which
use ``ruamel.yaml`` (a DVC dependency) in round-trip mode so that comments and layout survive.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import posixpath
import re
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cotshape.core.hashing import md5_file
from cotshape.core.records import write_text

PACKAGE = "cotshape"
REPO_ROOT = Path(__file__).resolve().parents[2]
#: where the ``code`` stage writes one fingerprint per stage script (``code/sft.txt``)
CODE_DIR = "code"
#: the folder of the stage scripts that get a fingerprint
SCRIPTS_DIR = "stages"

#: Package files that load code by a name computed at run time, and the package modules
#: they load that way (added to the closure whenever the file is in it). ``()`` records a
#: site that has been read and loads no package module by name.
DYNAMIC_IMPORTS: dict[str, tuple[str, ...]] = {
    # the fork server pre-imports standard-library modules by name (_PREIMPORT)
    "cotshape/execution/sandbox/server.py": (),
    # starts the fork server as `sys.executable -I server.py --serve`: a package file the host
    # side imports, already in the closure
    "cotshape/execution/sandbox/host.py": (),
    # the bwrap probe runs `sys.executable -I -c` with a one-line stdlib program
    "cotshape/execution/sandbox/isolation.py": (),
    # exec_with_jemalloc re-executes the running stage's own command line (sys.executable,
    # sys.orig_argv): the same script, already in the closure
    "cotshape/core/allocator.py": (),
    # launch_command reruns the stage's own script (plain python or `accelerate launch`)
    "cotshape/sft/train.py": (),
    # runs `python -m dvc exp show` (DVC, not package code) and asks find_spec whether dvc exists
    "cotshape/reporting/compare.py": (),
    # imports the user's task modules (base.task_modules) and the cotshape.tasks entry points:
    # code outside the package (README, "Adding a task": add such a file to the stages' deps)
    "cotshape/tasks/__init__.py": (),
}

#: call names that import or run code by a string (see the module docstring)
_DYNAMIC_CALLS = frozenset({"import_module", "__import__", "run_module", "run_path", "spec_from_file_location"})

_PYTHON_CMD = re.compile(
    r"(?:^|[\s;&|(])(?:\S*/)?python(?:3(?:\.\d+)?)?"  # python, python3, python3.11, /usr/bin/python3
    r"(?:\s+-[A-Za-z]+)*"  # -u, -B, -O ...
    r"\s+(?:-m\s+(?P<module>[\w.]+)|(?P<script>[^\s;&|)]+\.py))"
)


# --------------------------------------------------------------------------------------------
# the import graph


def _abs(path: Path) -> Path:
    # absolute and normalised, but symlinks kept: a linked-in package still counts as inside root
    return Path(os.path.normpath(os.path.abspath(path)))


def _in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _module_file(root: Path, name: str) -> Path | None:
    """The file Python runs for module ``name`` under ``root`` (package ``__init__`` first)."""
    base = root.joinpath(*name.split("."))
    init = base / "__init__.py"
    if init.is_file():
        return init
    mod = base.parent / (base.name + ".py")
    return mod if mod.is_file() else None


def _module_name(root: Path, path: Path) -> tuple[str | None, bool]:
    """(dotted name, is a package ``__init__``) of a file under ``root``; (None, False) outside."""
    try:
        rel = _abs(path).relative_to(_abs(root))
    except ValueError:
        return None, False
    parts = list(rel.with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts) or None, is_pkg


def _imported_names(tree: ast.AST, module: str | None, is_pkg: bool, package: str) -> set[str]:
    """Every package module name an import statement anywhere in ``tree`` may load.

    ``from a import b`` yields both ``a`` and ``a.b``; the caller keeps the names that resolve
    to files, so ``b`` counts only when it is a submodule.
    """
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue  # a relative import in a script fails at run time; nothing to follow
                anchor = module.split(".") if is_pkg else module.split(".")[:-1]
                if node.level - 1 > len(anchor):
                    continue
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if not base:
                continue
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return {n for n in names if _in_package(n, package)}


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _closure(root: Path, entry_files: Iterable[Path], entry_modules: Iterable[str], package: str) -> list[str]:
    root = _abs(root)
    seen: set[Path] = set()
    todo_files: list[Path] = []
    todo_names: list[str] = list(entry_modules)
    done_names: set[str] = set()
    for f in entry_files:
        if not Path(f).is_file():
            raise FileNotFoundError(f"stage script not found: {f}")
        todo_files.append(_abs(f))
    while todo_files or todo_names:
        while todo_names:
            for name in _with_parents(todo_names.pop()):
                if name not in done_names:
                    done_names.add(name)
                    if (path := _module_file(root, name)) is not None:
                        todo_files.append(path)
        if not todo_files:
            break
        path = todo_files.pop()
        if path in seen:
            continue
        seen.add(path)
        module, is_pkg = _module_name(root, path)
        if module is not None and _in_package(module, package):
            todo_names.extend(_with_parents(module))  # running a package module runs its __init__s
            todo_names.extend(DYNAMIC_IMPORTS.get(path.relative_to(root).as_posix(), ()))
        else:
            module, is_pkg = None, False  # a script outside the package runs as __main__
        tree = ast.parse(path.read_bytes(), filename=str(path))
        todo_names.extend(_imported_names(tree, module, is_pkg, package))
    return sorted(
        path.relative_to(root).as_posix()
        for path in seen
        if (module := _module_name(root, path)[0]) is not None and _in_package(module, package)
    )


def module_files(stage_script: str | Path, root: Path = REPO_ROOT, package: str = PACKAGE) -> list[str]:
    """Sorted repo-relative POSIX paths of the ``package`` files that ``stage_script`` runs.

    ``stage_script`` is relative to ``root`` unless absolute. A script inside the package is
    part of its own result.
    """
    root = Path(root)
    script = Path(stage_script)
    if not script.is_absolute():
        script = root / script
    return _closure(root, [script], [], package)


def dynamic_import_sites(root: Path = REPO_ROOT, package: str = PACKAGE, extra: Iterable[str | Path] = ()) -> list[str]:
    """Repo-relative files of ``package`` (and ``extra`` files) that load code by a computed name.

    Looks for calls named ``import_module``, ``__import__``, ``run_module``, ``run_path``,
    ``spec_from_file_location`` and for ``sys.executable``; the result for the package must
    equal the keys of :data:`DYNAMIC_IMPORTS` (a test checks it).
    """
    root = Path(root)
    files = sorted((root / package).rglob("*.py")) + [root / Path(p) for p in extra]
    sites = []
    for path in files:
        tree = ast.parse(path.read_bytes(), filename=str(path))
        for node in ast.walk(tree):
            hit = False
            if isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
                hit = name in _DYNAMIC_CALLS
            elif isinstance(node, ast.Attribute):
                hit = node.attr == "executable" and isinstance(node.value, ast.Name) and node.value.id == "sys"
            if hit:
                sites.append(path.relative_to(root).as_posix())
                break
    return sorted(sites)


# --------------------------------------------------------------------------------------------
# dvc.yaml


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()  # round-trip: keeps comments, key order, quoting and block scalars
    yaml.preserve_quotes = True
    yaml.width = 1 << 16  # never re-wrap a long command
    yaml.indent(mapping=2, sequence=4, offset=2)  # the layout DVC itself writes
    return yaml


def _load(dvc_yaml: Path) -> tuple[Any, Any, str]:
    yaml = _yaml()
    text = Path(dvc_yaml).read_text(encoding="utf-8")
    return yaml, yaml.load(text), text


def _dump(yaml, data) -> str:
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def _stage_bodies(data) -> dict[str, Any]:
    """stage name as written -> the mapping holding its cmd and deps (``do:`` for foreach)."""
    out = {}
    for name, stage in (data or {}).get("stages", {}).items():
        out[str(name)] = stage["do"] if "foreach" in stage else stage
    return out


def _entry_points(cmd: str | list) -> tuple[list[str], list[str]]:
    """(scripts, modules) that the ``python ...`` commands of ``cmd`` run."""
    cmds = [cmd] if isinstance(cmd, str) else list(cmd or [])
    scripts, modules = [], []
    for c in cmds:
        for m in _PYTHON_CMD.finditer(str(c)):
            if m.group("module"):
                modules.append(m.group("module"))
            else:
                scripts.append(posixpath.normpath(m.group("script")))
    return scripts, modules


def _stage_root(dvc_yaml: Path, body, stage: str) -> Path:
    wdir = str(body.get("wdir", "."))
    if "${" in wdir:
        raise ValueError(f"stage {stage!r}: cannot resolve wdir {wdir!r}")
    return _abs(Path(dvc_yaml)).parent / wdir


def _needed(dvc_yaml: Path, stage: str, body, package: str) -> tuple[list[str], list[str]]:
    """(stage scripts, needed package files) of one stage."""
    scripts, modules = _entry_points(body.get("cmd", ""))
    for s in scripts:
        if "${" in s:
            raise ValueError(f"stage {stage!r}: cannot follow a templated script path {s!r}")
    root = _stage_root(dvc_yaml, body, stage)
    files = _closure(root, [root / s for s in scripts], modules, package) if scripts or modules else []
    return scripts, files


def fingerprint_path(script: str) -> str:
    """The fingerprint file that stands for stage script ``stages/X.py``: ``code/X.txt``."""
    return f"{CODE_DIR}/{posixpath.splitext(posixpath.basename(script))[0]}.txt"


def _fingerprinted(script: str) -> bool:
    return posixpath.dirname(posixpath.normpath(script)) == SCRIPTS_DIR


def _needed_deps(dvc_yaml: Path, stage: str, body, package: str) -> tuple[list[str], list[str]]:
    """(deps the stage must list for its code, deps that stand for code and are redundant).

    A ``python stages/X.py`` command needs ``code/X.txt`` (the fingerprint of the script and
    every package file it runs, written by the ``code`` stage); the script and those package
    files listed one by one are then redundant. A ``python -m cotshape.x`` command needs the
    package files it runs, or the whole package folder.
    """
    scripts, modules = _entry_points(body.get("cmd", ""))
    listed = [_dep_path(d) for d in body.get("deps") or []]
    needed = [fingerprint_path(s) for s in scripts if _fingerprinted(s)]
    plain_scripts = [s for s in scripts if not _fingerprinted(s)]
    redundant = [s for s in scripts if _fingerprinted(s)]
    if plain_scripts or modules:
        if package in listed:
            needed.append(package)
        else:
            root = _stage_root(dvc_yaml, body, stage)
            needed += _closure(root, [root / s for s in plain_scripts], modules, package)
    if not plain_scripts and not modules:
        redundant += [d for d in listed if _is_package_dep(d, package)]
    return needed, redundant


def _dep_path(dep) -> str:
    if isinstance(dep, dict):  # a dep with options is a one-key mapping
        dep = next(iter(dep))
    return posixpath.normpath(str(dep))


def _is_package_dep(path: str, package: str) -> bool:
    return path == package or path.startswith(package + "/")


def stage_code_deps(dvc_yaml: Path, package: str = PACKAGE) -> dict[str, list[str]]:
    """stage name -> sorted package files its command's ``python`` scripts/modules run."""
    _, data, _ = _load(dvc_yaml)
    return {name: _needed(dvc_yaml, name, body, package)[1] for name, body in _stage_bodies(data).items()}


def _is_code_dep(path: str, package: str) -> bool:
    """A dep that stands for code: a package file or folder, or a fingerprint file."""
    return _is_package_dep(path, package) or path.startswith(CODE_DIR + "/")


def _compare(dvc_yaml: Path, package: str) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    _, data, _ = _load(dvc_yaml)
    missing, extra = {}, {}
    for name, body in _stage_bodies(data).items():
        needed, redundant = _needed_deps(dvc_yaml, name, body, package)
        listed = [_dep_path(d) for d in body.get("deps") or []]
        if miss := [f for f in needed if f not in listed]:
            missing[name] = miss
        if ext := [d for d in listed if d not in needed and (d in redundant or _is_code_dep(d, package))]:
            extra[name] = ext
    return missing, extra


def missing_deps(dvc_yaml: Path, package: str = PACKAGE) -> dict[str, list[str]]:
    """stage -> code deps it needs that its ``deps:`` do not list (stages with none left out):
    ``code/X.txt`` for a ``stages/X.py`` script, package files for a ``python -m`` module."""
    return _compare(dvc_yaml, package)[0]


def extra_deps(dvc_yaml: Path, package: str = PACKAGE) -> dict[str, list[str]]:
    """stage -> code deps it lists for nothing: package files it does not run, fingerprints of
    other scripts, and the script and package files a fingerprint already stands for."""
    return _compare(dvc_yaml, package)[1]


# --------------------------------------------------------------------------------------------
# fingerprints (the ``code`` stage)


def fingerprint(script: str | Path, root: Path = REPO_ROOT, package: str = PACKAGE) -> str:
    """The text of ``code/X.txt`` for ``stages/X.py``: ``md5  path`` of the script and of every
    package file it runs (sorted), so the text changes exactly when one of those files does."""
    root = Path(root)
    rel = Path(script).as_posix()  # relative to root
    files = [rel, *module_files(rel, root, package)]
    lines = [f"{md5_file(root / f)}  {f}" for f in files]
    return (f"# the code {rel} runs (python -m cotshape.pipeline.depgraph --fingerprint): "
            "a stage depending on this file reruns when any of them changes\n" + "\n".join(lines) + "\n")


def write_fingerprints(out_dir: str | Path = CODE_DIR, root: Path = REPO_ROOT, package: str = PACKAGE,
                       scripts_dir: str = SCRIPTS_DIR) -> list[str]:
    """Write ``out_dir/X.txt`` for every ``scripts_dir/X.py`` (each atomically, only when its text
    changes, so an unchanged fingerprint keeps its mtime) and remove fingerprints of scripts that
    are gone. Returns the paths written."""
    root = Path(root)
    out = root / out_dir if not Path(out_dir).is_absolute() else Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scripts = sorted((root / scripts_dir).glob("*.py"))
    written, keep = [], set()
    for script in scripts:
        target = out / f"{script.stem}.txt"
        keep.add(target.name)
        text = fingerprint(script.relative_to(root).as_posix(), root, package)
        if not target.exists() or target.read_text(encoding="utf-8") != text:
            _atomic_write(target, text)
            written.append(target.relative_to(root).as_posix() if target.is_relative_to(root) else str(target))
    for stale in out.glob("*.txt"):
        if stale.name not in keep:
            stale.unlink()
    return written


def write_deps(dvc_yaml: Path, package: str = PACKAGE) -> list[str]:
    """Make each stage's code deps exactly what :func:`missing_deps` asks for, first in its list.

    A ``stages/X.py`` stage gets ``code/X.txt`` in place of its script and package files; a
    ``python -m`` stage its package files. Every other dep keeps its order, and the rest of the
    file (comments included) is kept byte for byte; refuses (``RuntimeError``, file untouched)
    when a plain round trip of the file would already change it, or when the edit would change
    any line other than code dep lines (ruamel drops a comment that hangs on a removed item).
    Writes atomically (temp file + ``os.replace``) and only when something changed. Returns the
    names of the stages changed.
    """
    from ruamel.yaml.comments import CommentedSeq

    dvc_yaml = Path(dvc_yaml)
    yaml, data, text = _load(dvc_yaml)
    if _dump(yaml, data) != text:
        raise RuntimeError(f"a ruamel.yaml round trip would reformat {dvc_yaml}; not rewriting it")
    changed, code_lines = [], set()
    for name, body in _stage_bodies(data).items():
        needed, redundant = _needed_deps(dvc_yaml, name, body, package)
        deps = body.get("deps")
        current = [_dep_path(d) for d in deps or []]

        code = {d for d in current + needed if d in needed or d in redundant or _is_code_dep(d, package)}
        others = [d for d in current if d not in code]
        code_lines.update(code)
        if current == needed + others:
            continue
        if deps is None:
            deps = CommentedSeq()
            keys = list(body)
            body.insert(keys.index("cmd") + 1 if "cmd" in keys else len(keys), "deps", deps)
        # edit in place, so that comments attached to the kept items stay with them
        for i in reversed(range(len(deps))):
            if _dep_path(deps[i]) in code:
                del deps[i]
        for j, f in enumerate(needed):
            deps.insert(j, f)
        changed.append(name)
    if changed:
        new_text = _dump(yaml, data)
        # ruamel hangs a comment or blank line that follows a seq item on that item: deleting
        # the item would drop it. Apart from code dep lines the text must not change.
        if _without_dep_lines(new_text, code_lines) != _without_dep_lines(text, code_lines):
            raise RuntimeError(
                f"rewriting {dvc_yaml} would change more than its code dep lines (a comment or blank "
                f"line hangs on a removed dep?); not rewriting it: edit those deps by hand"
            )
        _atomic_write(dvc_yaml, new_text)
    return changed


def _without_dep_lines(text: str, paths: set[str]) -> list[str]:
    dep_line = re.compile(r"^\s*-\s+['\"]?(?P<path>[^\s'\"#]+)['\"]?\s*(#.*)?$")
    return [line for line in text.splitlines(keepends=True)
            if not ((m := dep_line.match(line)) and posixpath.normpath(m.group("path")) in paths)]


def _atomic_write(path: Path, text: str) -> None:
    """:func:`~cotshape.core.records.write_text`, keeping the file's permission bits (0o644 when new)."""
    write_text(path, text, newline="", mode=path.stat().st_mode & 0o7777 if path.exists() else 0o644)


# --------------------------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m cotshape.pipeline.depgraph",
        description="Each DVC stage's library files, from the import graph of its script.",
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report missing/extra cotshape deps; exit 1 if any")
    mode.add_argument("--write", action="store_true", help="rewrite deps: so that code deps are exact")
    mode.add_argument("--fingerprint", metavar="OUT_DIR", nargs="?", const=CODE_DIR,
                      help=f"write OUT_DIR/X.txt (default {CODE_DIR}/) for every {SCRIPTS_DIR}/X.py: the code stage")
    ap.add_argument("dvc_yaml", nargs="?", default="dvc.yaml")
    args = ap.parse_args(argv)
    if args.fingerprint:
        written = write_fingerprints(args.fingerprint, root=Path.cwd())
        print(f"{args.fingerprint}/: {len(written)} fingerprint(s) changed" + (f": {', '.join(written)}" if written else ""))
        return 0
    path = Path(args.dvc_yaml)
    if args.write:
        changed = write_deps(path)
        print(f"{path}: updated deps of {', '.join(changed)}" if changed else f"{path}: deps already exact")
        return 0
    if args.check:
        missing, extra = _compare(path, PACKAGE)
        for name in sorted(set(missing) | set(extra)):
            for f in missing.get(name, []):
                print(f"{name}: missing {f}")
            for f in extra.get(name, []):
                print(f"{name}: extra {f}")
        if missing or extra:
            print(f"fix with: python -m cotshape.pipeline.depgraph --write {shlex.quote(str(path))}", file=sys.stderr)
            return 1
        print(f"{path}: library deps exact")
        return 0
    for name, files in stage_code_deps(path).items():
        print(f"{name}: {' '.join(files) if files else '(none)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
