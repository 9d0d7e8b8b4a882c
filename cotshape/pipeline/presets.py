"""Paper-scale presets: partial params files under ``presets/`` applied on top of params.yaml.

A preset has the sections and keys of params.yaml (only the ones it changes). It is applied in
one of two ways, both validated by :func:`cotshape.core.config.validate_params` before anything is
written or run:

* ``cotshape preset apply NAME [--set k=v ...]`` rewrites params.yaml (atomically, keeping its
  comments), so ``dvc repro`` runs the preset;
* ``cotshape preset exp NAME [--set k=v ...] [--run]`` prints (or runs) ``dvc exp run -S k=v ...``
  with only the keys that differ from params.yaml, so the preset becomes a DVC experiment and
  params.yaml stays the offline default.

``--set`` overrides (``sft.learning_rate=1e-5``, ``base.tasks=[gsm8k]``) are parsed as YAML
values and applied after the preset. A key that params.yaml does not have is an error, with the
closest known keys suggested.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from cotshape.core.errors import InputError, did_you_mean

#: presets live beside the package in a checkout; COTSHAPE_PRESETS_DIR points elsewhere
PRESETS_ENV = "COTSHAPE_PRESETS_DIR"
PRESET_PREFIX = "paper-"

_FLOAT_RE = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?\.?(inf|Inf|INF)|\.?(nan|NaN|NAN)")


class PresetError(InputError):
    """An unknown preset, a malformed preset file or override, or an unknown key."""


# ---- finding and reading presets ------------------------------------------------------
def presets_dir() -> Path:
    env = os.environ.get(PRESETS_ENV)
    if env:
        return Path(env)
    here = Path(__file__).resolve().parents[2] / "presets"
    # an installed (non-editable) package has no presets/ beside it: use the working dir's
    return here if here.is_dir() else Path.cwd() / "presets"


def list_presets() -> list[str]:
    """Names of the available presets (file stems, e.g. ``paper-gemma-2-2b``)."""
    d = presets_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def preset_path(name: str) -> Path:
    """The file of preset ``name``; ``gemma-2-2b`` also finds ``paper-gemma-2-2b``."""
    names = list_presets()
    for cand in (name, PRESET_PREFIX + name, name.removesuffix(".yaml")):
        if cand in names:
            return presets_dir() / f"{cand}.yaml"
    hint = did_you_mean(name, names, aliases={n.removeprefix(PRESET_PREFIX): n for n in names})
    hint = f"; {hint}" if hint else ""
    known = ", ".join(names) or f"none: {presets_dir()} has no *.yaml"
    raise PresetError(f"unknown preset {name!r}{hint} (known: {known})")


def load_preset(name: str) -> dict[str, Any]:
    """The preset's partial params as a dict of sections."""
    import yaml

    path = preset_path(name)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PresetError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise PresetError(f"{path}: a preset must be a mapping of params sections (base:, sft:, ...)")
    return data


def describe_preset(name: str) -> str:
    """The first comment line of the preset file (its one-line summary)."""
    for line in preset_path(name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").removeprefix("Paper preset: ")
    return ""


# ---- merging ---------------------------------------------------------------------------
def _unknown_key(key: str, allowed: Iterable[str], where: str) -> PresetError:
    hint = did_you_mean(key, allowed)
    hint = f" ({hint})" if hint else ""
    return PresetError(f"{where}: unknown key {key!r}{hint}")


def _leaf_keys(d: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.extend(_leaf_keys(v, key + ".") if isinstance(v, dict) else [key])
    return out


def _merge_into(target: dict[str, Any], patch: dict[str, Any], where: str, all_keys: list[str],
                prefix: str = "") -> None:
    """Deep-merge ``patch`` into ``target`` in place; keys must already exist in ``target``."""
    for k, v in patch.items():
        key = f"{prefix}{k}"
        if k not in target:
            raise _unknown_key(key, all_keys, where)
        if isinstance(target[k], dict):
            if not isinstance(v, dict):
                raise PresetError(f"{where}: {key}: must be a mapping of keys, got {v!r}")
            _merge_into(target[k], v, where, all_keys, key + ".")
        else:
            target[k] = copy.deepcopy(v)


def parse_value(raw: str) -> Any:
    """An override value, as YAML would read it; ``1e-5`` is a float (YAML 1.2), not a string."""
    import yaml

    if _FLOAT_RE.fullmatch(raw.strip()) and not re.fullmatch(r"[-+]?\d+", raw.strip()):
        return float(raw)
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise PresetError(f"--set value {raw!r} is not valid YAML ({getattr(e, 'problem', e)})") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``sft.learning_rate=1e-5`` -> (["sft", "learning_rate"], 1e-05)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise PresetError(f"--set {text!r}: expected KEY.SUBKEY=VALUE, e.g. sft.learning_rate=1e-5")
    if raw.strip() == "":
        raise PresetError(f"--set {text!r}: empty value for {key!r}")
    return key.split("."), parse_value(raw)


def _nest(path: list[str], value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def merge_preset(name: str, params: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """``params`` with the preset and then ``overrides`` deep-merged in (not validated)."""
    merged = copy.deepcopy(params)
    all_keys = _leaf_keys(params)
    _merge_into(merged, load_preset(name), str(preset_path(name)), all_keys)
    for text in overrides:
        path, value = parse_override(text)
        _merge_into(merged, _nest(path, value), f"--set {text}", all_keys)
    return merged


def apply_preset(name: str, params: dict[str, Any], overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Deep-merge preset ``name`` and then ``key.sub=value`` overrides into a copy of ``params``
    and validate the result (:class:`cotshape.core.config.ParamsError` names the bad key)."""
    from cotshape.core.config import validate_params

    merged = merge_preset(name, params, overrides)
    source = f"preset {name}" + (f" with --set {' '.join(overrides)}" if overrides else "")
    validate_params(merged, source=source)
    return merged


def changed_keys(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of every leaf that differs, in params order."""
    out = []
    for k, v in new.items():
        key = f"{prefix}{k}"
        before = old.get(k) if isinstance(old, dict) else None
        if isinstance(v, dict):
            out.extend(changed_keys(before or {}, v, key + "."))
        elif not _same(before, v):
            out.append((key, before, v))
    return out


def _same(a: Any, b: Any) -> bool:
    # 1e-6 and 1.0e-06 are the same; True and 1 are not
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


# ---- dvc exp run -S -------------------------------------------------------------------
def hydra_value(v: Any) -> str:
    """A value in the Hydra override grammar that ``dvc exp run -S`` parses."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        # always quoted: a string like "5" or "true" must stay a string
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, list):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k}:{hydra_value(x)}" for k, x in v.items()) + "}"
    raise PresetError(f"cannot pass {v!r} ({type(v).__name__}) to dvc exp run -S")


def read_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.exists():
        raise PresetError(f"{path}: file not found")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise PresetError(f"{path}: must be a mapping of sections")
    return data


def exp_run_args(name: str, overrides: Sequence[str] = (), params_path: str | os.PathLike = "params.yaml") -> list[str]:
    """The ``-S key=value`` arguments of ``dvc exp run`` that turn params.yaml into the preset
    (with overrides): one pair per leaf that differs. Validated first."""
    params = read_params(params_path)
    merged = apply_preset(name, params, overrides)
    # dvc applies bare keys to the repo's params.yaml; another file is named as FILE:key=value
    file_prefix = "" if Path(params_path).name == "params.yaml" else f"{params_path}:"
    args: list[str] = []
    for key, _, new in changed_keys(params, merged):
        args += ["-S", f"{file_prefix}{key}={hydra_value(new)}"]
    return args


# ---- rewriting params.yaml -------------------------------------------------------------
def _pyyaml_float(r, data: float):
    # PyYAML (YAML 1.1, what the stages read params.yaml with) reads "1e-06" as a string:
    # write floats the way PyYAML itself does ("1.0e-06")
    import yaml

    text = yaml.safe_dump(data).splitlines()[0]
    return r.represent_scalar("tag:yaml.org,2002:float", text)


def write_params(path: str | os.PathLike, changes: list[tuple[str, Any, Any]]) -> None:
    """Apply ``changes`` to the YAML file at ``path`` in place, atomically, keeping its comments
    and layout (ruamel round trip); lists are written in flow style like params.yaml's."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq
    from ruamel.yaml.representer import RoundTripRepresenter

    from cotshape.core.records import write_text

    # add_representer is a class method: a subclass keeps dvc's own ruamel writer untouched
    class _Representer(RoundTripRepresenter):
        pass

    _Representer.add_representer(float, _pyyaml_float)
    y = YAML()
    y.Representer = _Representer
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    path = Path(path)
    doc = y.load(path.read_text(encoding="utf-8"))
    for key, _, new in changes:
        parts = key.split(".")
        node = doc
        for p in parts[:-1]:
            node = node[p]
        if isinstance(new, list):
            seq = CommentedSeq(new)
            seq.fa.set_flow_style()
            new = seq
        node[parts[-1]] = new
    buf = io.StringIO()
    y.dump(doc, buf)
    write_text(path, buf.getvalue())


# ---- command line ----------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cotshape preset", description="Paper-scale presets (presets/*.yaml).")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="list the presets")
    s = sub.add_parser("show", help="print a preset file (with the source of each setting)")
    s.add_argument("name")
    for cmd, help_ in (("apply", "rewrite params.yaml with the preset (validated first)"),
                       ("exp", "print (or --run) `dvc exp run -S ...` for the preset")):
        a = sub.add_parser(cmd, help=help_)
        a.add_argument("name")
        a.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override one key after the preset, e.g. --set prepare.train_size=500")
        a.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
        if cmd == "apply":
            a.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
        else:
            a.add_argument("--run", action="store_true", help="run the command instead of printing it")
    return p


def _fmt(v: Any) -> str:
    return "(absent)" if v is None else repr(v)


def cmd_list() -> int:
    for name in list_presets():
        print(f"{name:24s} {describe_preset(name)}")
    return 0


def cmd_show(name: str) -> int:
    print(preset_path(name).read_text(encoding="utf-8"), end="")
    return 0


def cmd_apply(name: str, overrides: list[str], params_file: str = "params.yaml", dry_run: bool = False) -> int:
    params = read_params(params_file)
    merged = apply_preset(name, params, overrides)
    changes = changed_keys(params, merged)
    for key, old, new in changes:
        print(f"{key}: {_fmt(old)} -> {_fmt(new)}")
    if dry_run:
        print(f"(dry run: {params_file} not written)")
    elif changes:
        write_params(params_file, changes)
        print(f"wrote {params_file} ({len(changes)} keys changed)")
    else:
        print(f"{params_file} already matches the preset")
    return 0


def cmd_exp(name: str, overrides: list[str], params_file: str = "params.yaml", run: bool = False) -> int:
    cmd = ["dvc", "exp", "run", *exp_run_args(name, overrides, params_file)]
    if not run:
        print(shlex.join(cmd))
        return 0
    return subprocess.call(cmd)


def cli_main(argv: list[str]) -> int:
    """``python -m cotshape.pipeline.presets list | show NAME | apply NAME ... | exp NAME ...`` (the same
    commands as ``cotshape preset``); returns the exit code."""
    from cotshape.core.config import ParamsError

    args = _parser().parse_args(argv)
    try:
        if args.cmd == "list":
            return cmd_list()
        if args.cmd == "show":
            return cmd_show(args.name)
        if args.cmd == "apply":
            return cmd_apply(args.name, args.overrides, args.params, args.dry_run)
        return cmd_exp(args.name, args.overrides, args.params, args.run)
    except (PresetError, ParamsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli_main(sys.argv[1:]))
