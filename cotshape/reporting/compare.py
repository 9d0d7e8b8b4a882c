"""The DVC experiments of a repository, read back and grouped: seeds and sweeps.

Seeds are experiments (``dvc exp run -S base.seed=N``); this module reads them back and says
what they agree on::

    exps = collect(Path("."))                  # runs `dvc exp show --json` (or takes its JSON)
    groups = group(exps)                       # params equal except the seeds -> one group
    result = pooling.compare(groups)           # mean, sd, min, max per accuracy; pooled verdicts;
                                               # result["students"]: H/G/W/P and P - H by student
    compare_markdown.write(result, Path("compare"))  # compare.md + compare.json, each atomically

``cotshape compare`` is the command around it.

**The rows.** ``dvc exp show --json`` (DVC 3.x) returns a list: the workspace first (``"rev":
"workspace"``), then one entry per baseline commit (HEAD; every commit with ``-A``), each with
``rev``, ``name`` (the branch), ``data`` (``params``/``metrics`` keyed by file, each
``{"data": ...}`` or ``{"error": {"type", "msg"}}``), ``error`` and ``experiments``: a list of
``{"name", "executor", "revs": [{"rev", "name", "data", "error", ...}]}``, ``executor`` being
``null`` for a finished ``dvc exp run`` and ``{"state": "queued" | "running" | "success" |
"failed", ...}`` for a queued one. The baseline commits and every finished experiment are the
rows (the workspace only when asked); queued, running and failed experiments, and rows without
``metrics/summary.json``, are skipped and listed as skipped in the report.

**What each row carries** (written by the pipeline's report stage)::

    metrics/summary.json  {task: {"teacher_acc", "both_frac", "n_test",
                                  set: {"acc", "ci", "loss", "step_acc"}}}
                          (older commits: set: {"acc", "lo", "hi", "d_base", "d_H", "loss", "step_acc"};
                          both are read, d_base = acc - base.acc where absent)
    metrics/claims.json   {"margin": m, "claims": [{"id", "task", "statement", "kind", "verdict",
                                                    "evidence": {"diff", "ci95", "n"} or
                                                                {"parts": {name: {"diff", "ci95", "n"}}}}]}

    metrics/provenance.json  {"cotshape_commit", "versions": {package: version}, "backend", "dtype",
                              "device", "cpu", "gpu", "batch_size": {stage: n}, "tensor_parallel_size",
                              "evaluation_files", "mixed": {field: {file: value}} where they differ}
                          (optional: commits from before it existed have none; any JSON object is
                          read, nested keys compared as dotted fields)

DVC's metrics reader keeps only numbers, so the claims and the provenance are read from git: ``git show
REV:metrics/claims.json`` for each row (the file on disk for the workspace), falling back to the
JSON given when git cannot (a saved ``dvc exp show --json`` from elsewhere).

The pooling of each group is :mod:`cotshape.reporting.pooling`; its Markdown
:mod:`cotshape.reporting.compare_markdown`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotshape.core.errors import InputError
from cotshape.pipeline.depgraph import CODE_DIR  # code/X.txt: the stage-code fingerprints

log = logging.getLogger(__name__)

SUMMARY_PATH = "metrics/summary.json"
CLAIMS_PATH = "metrics/claims.json"
#: what produced a row's numbers (versions, commit, hardware, batch sizes): read from git like the
#: claims; pooled experiments that differ in any field get a warning naming it
PROVENANCE_PATH = "metrics/provenance.json"
PARAMS_FILE = "params.yaml"
SEED_PARAM = "base.seed"
#: the seeds a group of replicates may differ in: base.seed and the per-source seeds (a data
#: seed is another draw of teacher data, an SFT seed another set of training runs)
SEED_PARAMS = (SEED_PARAM, "base.data_seed", "base.sft_seed", "base.eval_seed")

#: fields of a set's summary entry that are aggregated across seeds (lo/hi are one seed's
#: interval bounds: their mean is no interval, so the per-seed spread stands in for them)
SET_FIELDS = ("acc", "d_base", "loss")
#: per-seed interval bounds of a set: validated, not aggregated
SET_BOUNDS = ("lo", "hi")


class CompareError(InputError):
    """Nothing to compare, a malformed metrics file, or dvc that cannot be run."""


@dataclass
class Experiment:
    """One row of ``dvc exp show``: a baseline commit, an experiment, or the workspace."""

    name: str
    rev: str
    kind: str  # "baseline" | "experiment" | "workspace"
    params: dict[str, Any]  # flat: "base.seed" -> 1 (params.yaml), "other.yaml:key" -> v
    summary: dict[str, Any]
    claims: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None  # metrics/provenance.json: what produced the numbers
    code: dict[str, str] | None = None  # code/X.txt -> its md5: the code each stage ran (dvc.lock deps)
    baseline: str | None = None  # the baseline commit of an experiment
    timestamp: str | None = None

    @property
    def seed(self) -> Any:
        """``base.seed``; with a per-source seed set, e.g. ``"0 (data 1)"``."""
        base = self.params.get(SEED_PARAM)
        extra = [f"{k.split('.', 1)[1].removesuffix('_seed')} {self.params[k]}" for k in SEED_PARAMS[1:]
                 if self.params.get(k) is not None]
        return base if not extra else f"{base} ({', '.join(extra)})"

    @property
    def short_rev(self) -> str:
        return self.rev if self.rev == "workspace" else self.rev[:7]

    @property
    def label(self) -> str:
        return f"{self.name} ({self.short_rev})"


@dataclass
class Group:
    """Experiments whose params are equal except the ignored ones (by default the seed)."""

    params: dict[str, Any]  # the params that define the group (all shared by its members)
    members: list[Experiment]
    label: str = ""
    differing: dict[str, Any] = field(default_factory=dict)  # params telling it apart from other groups


# ---- collecting ------------------------------------------------------------------------------

def dvc_command() -> list[str]:
    """How to run dvc: this interpreter's dvc module (a dependency of cotshape), else ``dvc`` on PATH."""
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    exe = shutil.which("dvc")
    if exe:
        return [exe]
    raise CompareError("dvc not found: install it (pip install dvc) or pass --json FILE with a saved "
                       "`dvc exp show --json`")


def run_exp_show(repo: Path, all_commits: bool = False) -> list[Any]:
    """The parsed output of ``dvc exp show --json`` run in ``repo``."""
    if not repo.is_dir():
        raise CompareError(f"{repo}: no such folder")
    cmd = [*dvc_command(), "exp", "show", "--json"] + (["-A"] if all_commits else [])
    try:
        proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    except OSError as e:
        raise CompareError(f"dvc could not be started ({e}); pass --json FILE instead") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines() if ln.strip()]
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise CompareError(f"`dvc exp show --json` failed in {repo}: {why}")
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise CompareError(f"`dvc exp show --json` in {repo} printed no valid JSON ({e.msg})") from None
    return _check_layout(data, "`dvc exp show --json`")


def load_exp_show(path: Path) -> list[Any]:
    """A saved ``dvc exp show --json`` file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CompareError(f"{path}: file not found") from None
    except json.JSONDecodeError as e:
        raise CompareError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    return _check_layout(data, str(path))


def _check_layout(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list) or not all(isinstance(r, dict) and "rev" in r for r in data):
        raise CompareError(f"{where}: expected the list of revisions `dvc exp show --json` prints "
                           "(DVC 3: [{'rev', 'name', 'data', 'experiments'}, ...])")
    return data


def _flatten(obj: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(obj, dict) and obj:
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = obj


def flatten(obj: dict[str, Any]) -> dict[str, Any]:
    """A nested dict as dotted keys: ``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (an empty dict stays a value)."""
    out: dict[str, Any] = {}
    if obj:
        _flatten(obj, "", out)
    return out


def _params(data: dict[str, Any]) -> dict[str, Any]:
    """Flat params of a row: params.yaml keys as ``a.b``, other params files as ``file:a.b``."""
    out: dict[str, Any] = {}
    for fname, entry in sorted((data.get("params") or {}).items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), dict):
            continue
        for k, v in flatten(entry["data"]).items():
            out[k if fname == PARAMS_FILE else f"{fname}:{k}"] = v
    return out


def _metric(data: dict[str, Any], path: str, label: str) -> Any | None:
    """The parsed metrics file ``path`` of a row; None when it does not exist there."""
    entry = (data.get("metrics") or {}).get(path)
    if entry is None:
        return None
    if "error" in entry and "data" not in entry:
        err = entry["error"] or {}
        if err.get("type") == "FileNotFoundError":
            return None
        raise CompareError(f"{label}: {path} is unreadable ({err.get('type')}: {err.get('msg')})")
    return entry.get("data")


def code_fingerprints(data: dict[str, Any]) -> dict[str, str] | None:
    """``code/X.txt`` -> md5 of a row's stage-code fingerprints (its deps in ``dvc exp show``:
    cotshape.pipeline.depgraph writes one per stage script); None when the row has none."""
    out = {path: str(entry["hash"]) for path, entry in (data.get("deps") or {}).items()
           if path.startswith(f"{CODE_DIR}/") and isinstance(entry, dict) and entry.get("hash")}
    return out or None


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_summary(summary: Any, where: str) -> dict[str, Any]:
    """Check the layout of a ``metrics/summary.json`` document; errors name the key."""
    if not isinstance(summary, dict):
        raise CompareError(f"{where}: expected an object {{task: {{...}}}}, got {type(summary).__name__}")
    for task, entry in summary.items():
        if not isinstance(entry, dict):
            raise CompareError(f"{where}: {task}: expected an object of sets and fields, "
                               f"got {type(entry).__name__}")
        for key, val in entry.items():
            if isinstance(val, dict):
                for f in (*SET_FIELDS, *SET_BOUNDS):
                    if f in val and val[f] is not None and not is_number(val[f]):
                        raise CompareError(f"{where}: {task}.{key}.{f}: expected a number, got {val[f]!r}")
            elif val is not None and not is_number(val):
                raise CompareError(f"{where}: {task}.{key}: expected a number or a set object, got {val!r}")
    return summary


def _git_json(repo: Path, rev: str, path: str) -> Any | None:
    """A JSON file of a commit (``git show REV:PATH``), or None when git cannot show it."""
    try:
        proc = subprocess.run(["git", "show", f"{rev}:./{path}"], cwd=repo, capture_output=True,
                              text=True, check=False)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise CompareError(f"{rev[:7]}:{path}:{e.lineno}: invalid JSON ({e.msg})") from None


def _row_json(repo: Path, row: Experiment, path: str) -> Any | None:
    """A JSON file of a row: on disk for the workspace, from git for a commit or experiment."""
    if row.kind != "workspace":
        return _git_json(repo, row.rev, path)
    file = repo / path
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CompareError(f"{file}:{e.lineno}: invalid JSON ({e.msg})") from None


def _read_claims(repo: Path, row: Experiment, from_json: Any) -> dict[str, Any] | None:
    claims = _row_json(repo, row, CLAIMS_PATH)
    if claims is None and isinstance(from_json, dict) and "claims" in from_json:
        claims = from_json
    if claims is None:
        return None
    where = f"{row.label}: {CLAIMS_PATH}"
    if not isinstance(claims, dict) or not isinstance(claims.get("claims", []), list):
        raise CompareError(f"{where}: expected {{'margin': m, 'claims': [...]}}")
    for i, c in enumerate(claims.get("claims", [])):
        if not isinstance(c, dict) or "id" not in c:
            raise CompareError(f"{where}: claims[{i}]: expected an object with an 'id'")
        if c.get("kind") not in ("greater", "less", "equivalent"):
            raise CompareError(f"{where}: claims[{i}] ({c['id']}): kind must be greater, less or "
                               f"equivalent, got {c.get('kind')!r}")
    return claims


def _read_provenance(repo: Path, row: Experiment) -> dict[str, Any] | None:
    """``metrics/provenance.json`` of a row (None for commits from before it was recorded)."""
    prov = _row_json(repo, row, PROVENANCE_PATH)
    if prov is not None and not isinstance(prov, dict):
        raise CompareError(f"{row.label}: {PROVENANCE_PATH}: expected an object, got {type(prov).__name__}")
    return prov


def _rows(data: list[Any], workspace: bool) -> Iterable[tuple[str, str, str, str | None, dict, Any, Any]]:
    """(name, rev, kind, baseline, data, error, executor) of every row of a dvc exp show JSON."""
    for base in data:
        rev = str(base.get("rev"))
        if rev == "workspace":
            if workspace:
                yield "workspace", "workspace", "workspace", None, base.get("data") or {}, base.get("error"), None
            continue
        yield (base.get("name") or rev[:7], rev, "baseline", None, base.get("data") or {}, base.get("error"), None)
        for exp in base.get("experiments") or []:
            for r in exp.get("revs") or []:
                erev = str(r.get("rev"))
                yield (r.get("name") or exp.get("name") or erev[:7], erev, "experiment", rev,
                       r.get("data") or {}, r.get("error"), exp.get("executor"))


def collect(
    repo: Path,
    dvc_json: list | None = None,
    *,
    workspace: bool = False,
    all_commits: bool = False,
    skipped: list[str] | None = None,
) -> list[Experiment]:
    """The experiments of ``repo``: its baseline commit(s) and every finished experiment.

    ``dvc_json`` is a parsed ``dvc exp show --json`` to use instead of running dvc; ``workspace``
    adds the uncommitted workspace as a row; ``all_commits`` asks dvc for every commit's
    experiments (``-A``), not only HEAD's. Rows that cannot be compared (queued, running or
    failed experiments, rows without ``metrics/summary.json``) are left out and, when
    ``skipped`` is a list, described there. No row left is an error.
    """
    repo = Path(repo)
    data = run_exp_show(repo, all_commits) if dvc_json is None else _check_layout(dvc_json, "--json")
    out: list[Experiment] = []
    notes: list[str] = []
    for name, rev, kind, baseline, rdata, error, executor in _rows(data, workspace):
        label = f"{name} ({rev if rev == 'workspace' else rev[:7]})"
        state = (executor or {}).get("state") if isinstance(executor, dict) else None
        if state in ("queued", "running", "failed") or (error and state != "success"):
            why = state or (error.get("msg") if isinstance(error, dict) else str(error))
            notes.append(f"{label}: {why}")
            continue
        summary = _metric(rdata, SUMMARY_PATH, label)
        if summary is None:
            notes.append(f"{label}: no {SUMMARY_PATH}")
            continue
        validate_summary(summary, f"{label}: {SUMMARY_PATH}")
        exp = Experiment(name=name, rev=rev, kind=kind, params=_params(rdata), summary=summary,
                         baseline=baseline, timestamp=rdata.get("timestamp"), code=code_fingerprints(rdata))
        exp.claims = _read_claims(repo, exp, _metric(rdata, CLAIMS_PATH, label))
        exp.provenance = _read_provenance(repo, exp)
        out.append(exp)
    for n in notes:
        log.info("skipped %s", n)
    if skipped is not None:
        skipped.extend(notes)
    if not out:
        more = f"; and {len(notes) - 5} more" if len(notes) > 5 else ""
        detail = f" ({len(notes)} skipped: {'; '.join(notes[:5])}{more})" if notes else ""
        raise CompareError(f"no experiments with {SUMMARY_PATH} found in {repo}{detail}; run the pipeline "
                           "(dvc repro, dvc exp run -S base.seed=N) and commit first")
    return out


# ---- grouping --------------------------------------------------------------------------------

_ABSENT = "<absent>"


def param_key(v: Any) -> str:
    """A param value as a string that compares equal exactly when the values do."""
    return json.dumps(v, sort_keys=True, default=str)


def format_param(v: Any) -> str:
    """A param value as the README writes it: a string bare, anything else as JSON."""
    return v if isinstance(v, str) else json.dumps(v)


def group(
    exps: Sequence[Experiment],
    by_exclude: Sequence[str] = SEED_PARAMS,
    by: Sequence[str] | None = None,
) -> list[Group]:
    """Experiments whose params are equal except ``by_exclude`` form a group (by default:
    the seeds of one configuration, :data:`SEED_PARAMS`). With ``by``, only those params define the groups (and
    ``by_exclude`` is not used): every other param may differ within one. Groups keep the order
    in which they first appear; the members of a group are ordered by seed."""
    if by is not None:
        keys = list(dict.fromkeys(by))
    else:
        keys = sorted({k for e in exps for k in e.params} - set(by_exclude))
    groups: dict[tuple[str, ...], Group] = {}
    for e in exps:
        values = {k: e.params.get(k, _ABSENT) for k in keys}
        gk = tuple(param_key(values[k]) for k in keys)
        if gk not in groups:
            groups[gk] = Group(params=values, members=[])
        groups[gk].members.append(e)
    out = list(groups.values())
    varying = [k for k in keys if len({param_key(g.params[k]) for g in out}) > 1]
    for g in out:
        g.members.sort(key=lambda e: (_seed_key(e.seed), e.name))
        g.differing = {k: g.params[k] for k in varying}
        g.label = ", ".join(f"{k}={format_param(v)}" for k, v in g.differing.items()) or "all experiments"
    return out


def _seed_key(s: Any) -> tuple[int, float, str]:
    if is_number(s):
        return (0, float(s), "")
    return (1 if s is not None else 2, 0.0, str(s))
