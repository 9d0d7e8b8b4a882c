"""Compare the DVC experiments of a repository: seeds and sweeps, mean ± sd and pooled verdicts.

Seeds are experiments (``dvc exp run -S base.seed=N``); this module reads them back and says
what they agree on::

    exps = collect(Path("."))                  # runs `dvc exp show --json` (or takes its JSON)
    groups = group(exps)                       # params equal except base.seed -> one group
    result = compare(groups)                   # mean, sd, min, max per accuracy; pooled verdicts;
                                               # result["students"]: H/G/W/P and P - H by student
    write(result, Path("compare"))     # compare.md + compare.json, each atomically

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

DVC's metrics reader keeps only numbers, so the claims (strings) are read from git: ``git show
REV:metrics/claims.json`` for each row (the file on disk for the workspace), falling back to the
JSON given when git cannot (a saved ``dvc exp show --json`` from elsewhere).

**Pooling.** Per claim and task, the per-seed differences are combined with the seed (one run
of the pipeline) as the unit: :func:`cotshape.core.stats.random_effects_difference` (truncated
HKSJ random effects, never narrower than the t-interval over seeds; tau and I² reported); the
fixed-effect :func:`~cotshape.core.stats.pooled_difference` stays as a secondary column. The
claim's rule is applied to the run-level interval (:func:`~cotshape.core.stats.verdict_greater`, ``verdict_less``, ``verdict_equivalent``). A
claim made of parts holds when every part holds, is contradicted when any part is contradicted
and is inconclusive otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import re
import shutil
import statistics
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotshape.core.artifacts import set_sort_key
from cotshape.core.errors import InputError
from cotshape.core.records import write_json, write_text
from cotshape.reporting.formatting import DASH, NA, markdown_table

log = logging.getLogger(__name__)

SUMMARY_PATH = "metrics/summary.json"
CLAIMS_PATH = "metrics/claims.json"
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
SET_ORDER = ("base", "H", "G", "W", "P", "step")
VERDICTS = ("holds", "contradicted", "inconclusive")

POOLING_NOTE = (
    "Accuracies: mean ± sample sd (ddof 1) over the experiments of a group, with min, max and k "
    "(the number of experiments that have the value). Claims: each seed is one run of the whole "
    "pipeline (its own teacher samples, G/W draw and SFT), so the run is the unit: per claim and "
    "task the per-seed differences are combined as a random effect (DerSimonian-Laird tau, each "
    "seed's se = its CI half-width / 1.96; truncated Hartung-Knapp-Sidik-Jonkman interval on k - 1 "
    "degrees of freedom, hulled with the t-interval over the k per-seed differences, so it is never "
    "narrower than their spread; cotshape.core.stats.random_effects_difference). tau is the sd of "
    "the true difference between runs, I² the share of the spread between seeds that their own "
    "test-problem noise does not explain. One seed gives no run-level interval (inconclusive). The "
    "claim's rule is applied to that interval: greater — the interval lies above 0; less — below 0; "
    "equivalent — inside ±margin. A claim made of parts holds when every part holds, is "
    "contradicted when any part is, and is inconclusive otherwise. The fixed-effect column (an "
    "n-weighted mean, test-problem noise only: what the same students would score on other test "
    "problems, not what another training run would) is secondary."
)


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


def _params(data: dict[str, Any]) -> dict[str, Any]:
    """Flat params of a row: params.yaml keys as ``a.b``, other params files as ``file:a.b``."""
    out: dict[str, Any] = {}
    for fname, entry in sorted((data.get("params") or {}).items()):
        if not isinstance(entry, dict) or not isinstance(entry.get("data"), dict):
            continue
        flat: dict[str, Any] = {}
        _flatten(entry["data"], "", flat)
        for k, v in flat.items():
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


def _is_num(x: Any) -> bool:
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
                    if f in val and val[f] is not None and not _is_num(val[f]):
                        raise CompareError(f"{where}: {task}.{key}.{f}: expected a number, got {val[f]!r}")
            elif val is not None and not _is_num(val):
                raise CompareError(f"{where}: {task}.{key}: expected a number or a set object, got {val!r}")
    return summary


def _git_claims(repo: Path, rev: str) -> dict[str, Any] | None:
    """``metrics/claims.json`` of a commit, or None when git cannot show it."""
    try:
        proc = subprocess.run(["git", "show", f"{rev}:./{CLAIMS_PATH}"], cwd=repo, capture_output=True,
                              text=True, check=False)
    except OSError:
        return None
    if proc.returncode != 0:
        return None
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        raise CompareError(f"{rev[:7]}:{CLAIMS_PATH}:{e.lineno}: invalid JSON ({e.msg})") from None


def _read_claims(repo: Path, row: Experiment, from_json: Any) -> dict[str, Any] | None:
    if row.kind == "workspace":
        path = repo / CLAIMS_PATH
        claims = None
        if path.is_file():
            try:
                claims = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise CompareError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    else:
        claims = _git_claims(repo, row.rev)
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
                         baseline=baseline, timestamp=rdata.get("timestamp"))
        exp.claims = _read_claims(repo, exp, _metric(rdata, CLAIMS_PATH, label))
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
#: task-level summary fields that are counts (the others are fractions, shown in %)
COUNT_FIELDS = frozenset({"compared"})


def _hashable(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _fmt_param(v: Any) -> str:
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
        gk = tuple(_hashable(values[k]) for k in keys)
        if gk not in groups:
            groups[gk] = Group(params=values, members=[])
        groups[gk].members.append(e)
    out = list(groups.values())
    varying = [k for k in keys if len({_hashable(g.params[k]) for g in out}) > 1]
    for g in out:
        g.members.sort(key=lambda e: (_seed_key(e.seed), e.name))
        g.differing = {k: g.params[k] for k in varying}
        g.label = ", ".join(f"{k}={_fmt_param(v)}" for k, v in g.differing.items()) or "all experiments"
    return out


def _seed_key(s: Any) -> tuple[int, float, str]:
    if _is_num(s):
        return (0, float(s), "")
    return (1 if s is not None else 2, 0.0, str(s))


# ---- comparing -------------------------------------------------------------------------------

def aggregate(values: Sequence[float | None]) -> dict[str, Any]:
    """mean, sample sd (ddof 1; None for fewer than 2 values), min, max and k of the non-None
    values, and the values themselves (None where an experiment lacks it)."""
    xs = [float(v) for v in values if v is not None]
    return {
        "mean": statistics.fmean(xs) if xs else None,
        "sd": statistics.stdev(xs) if len(xs) > 1 else None,
        "min": min(xs) if xs else None,
        "max": max(xs) if xs else None,
        "k": len(xs),
        "values": [None if v is None else float(v) for v in values],
    }


def _set_sort_key(s: str) -> tuple[int, float, str]:
    """The order of the sets in the tables: SET_ORDER, step-K right after "step" by K, then the
    mixtures by fraction, then the rest by name (:func:`cotshape.core.artifacts.set_sort_key`)."""
    return set_sort_key(s, SET_ORDER)


def _num_or_none(x: Any) -> float | None:
    return float(x) if _is_num(x) else None


def set_value(task_entry: dict[str, Any], set_name: str, f: str) -> float | None:
    """Field ``f`` of one set in one experiment's summary entry of a task. ``d_base`` (accuracy
    minus the untrained base's) is derived as ``acc - base.acc`` where the summary does not
    carry it: summaries from before the report wrote ``{acc, ci, loss, step_acc}`` per set had
    ``lo``/``hi``/``d_base``/``d_H``; both layouts are read."""
    entry = task_entry.get(set_name)
    entry = entry if isinstance(entry, dict) else {}
    value = _num_or_none(entry.get(f))
    if value is None and f == "d_base" and set_name != "base":
        base = task_entry.get("base")
        acc, base_acc = _num_or_none(entry.get("acc")), _num_or_none(base.get("acc") if isinstance(base, dict) else None)
        if acc is not None and base_acc is not None:
            value = acc - base_acc
    return value


def _task_table(members: Sequence[Experiment], task: str) -> dict[str, Any]:
    entries = [m.summary.get(task) or {} for m in members]
    fields = sorted({k for e in entries for k, v in e.items() if not isinstance(v, dict)})
    sets = sorted({k for e in entries for k, v in e.items() if isinstance(v, dict)}, key=_set_sort_key)
    out: dict[str, Any] = {"fields": {}, "sets": {}}
    for f in fields:
        out["fields"][f] = aggregate([_num_or_none(e.get(f)) for e in entries])
    for s in sets:
        per = {f: [set_value(e, s, f) for e in entries] for f in SET_FIELDS}
        out["sets"][s] = {f: aggregate(vals) for f, vals in per.items() if any(v is not None for v in vals)}
    return out


def _seed_evidence(ev: Any) -> Any:
    """One seed's evidence as a difference with an interval: its run-level ``ci95`` when it
    trained several runs per arm; with one run (``ci95`` None) that run's own paired interval."""
    if isinstance(ev, dict) and ev.get("ci95") is None and len(ev.get("per_run_ci95") or []) == 1:
        return {**ev, "diff": ev["per_run"][0], "ci95": ev["per_run_ci95"][0]}
    return ev


def _evidence_ok(ev: Any) -> bool:
    if not isinstance(ev, dict):
        return False
    ci = ev.get("ci95")
    return (_is_num(ev.get("diff")) and isinstance(ci, (list, tuple)) and len(ci) == 2
            and all(_is_num(c) for c in ci) and ci[0] <= ci[1] and _is_num(ev.get("n")) and ev["n"] > 0)


def _verdict(kind: str, ci95: Sequence[float], margin: float | None) -> str:
    from cotshape.core import stats

    if kind == "greater":
        return stats.verdict_greater(ci95)
    if kind == "less":
        return stats.verdict_less(ci95)
    if margin is None:
        return NA
    return stats.verdict_equivalent(ci95, margin)


def pool_runs(diffs: Sequence[float], ses: Sequence[float] | None, kind: str, margin: float | None) -> dict[str, Any]:
    """The run-level pooled entry of one difference (:func:`cotshape.core.stats.random_effects_difference`;
    ``ses`` None: the t-interval over the runs) with its verdict; one run: inconclusive, with the reason."""
    from cotshape.core import stats

    re = stats.random_effects_difference(diffs, ses)
    p: dict[str, Any] = {"diff": re["diff"], "ci95": re["ci95"], "k": re["k"], "tau": re["tau"], "i2": re["i2"],
                         "sd": re["sd"], "per_seed": list(diffs)}
    if re["ci95"] is None:
        p["verdict"], p["reason"] = stats.INCONCLUSIVE, re["reason"]
    else:
        p["verdict"] = _verdict(kind, re["ci95"], margin)
    return p


def _pool(evidences: Sequence[Any], kind: str, margin: float | None) -> dict[str, Any]:
    """Pool one difference over the seeds that measured it, the training run being the unit
    (:func:`cotshape.core.stats.random_effects_difference`: each seed is one run of the whole
    pipeline); verdict by the claim's kind on that interval. The fixed-effect combination
    (test-problem noise only, :func:`~cotshape.core.stats.pooled_difference`) is kept as the
    secondary ``fixed`` entry."""
    from cotshape.core import stats

    ok = [ev for ev in map(_seed_evidence, evidences) if _evidence_ok(ev)]
    if not ok:
        return {"diff": None, "ci95": None, "k": 0, "n": 0, "verdict": NA}
    diffs = [float(ev["diff"]) for ev in ok]
    fe = stats.pooled_difference(diffs, [ev["ci95"] for ev in ok], [int(ev["n"]) for ev in ok])
    p = pool_runs(diffs, [stats.ci_se(ev["ci95"]) for ev in ok], kind, margin)
    p.update(n=fe["n"], per_seed_ci95=[list(ev["ci95"]) for ev in ok],
             fixed={**fe, "verdict": _verdict(kind, fe["ci95"], margin)})
    return p


def _variance(evidences: Sequence[Any]) -> dict[str, Any] | None:
    """The variance of a claim's run-level difference split into data draw (between seeds), SFT
    seed (between the runs of a seed) and test problems (each run's own se):
    :func:`cotshape.core.stats.variance_components` over the seeds' ``per_run`` differences. None
    when no seed kept two runs."""
    from cotshape.core import stats

    groups, ses = [], []
    for ev in evidences:
        if isinstance(ev, dict) and ev.get("per_run") and len(ev.get("per_run_ci95") or []) == len(ev["per_run"]):
            groups.append([float(x) for x in ev["per_run"]])
            ses.append([stats.ci_se(ci) ** 2 for ci in ev["per_run_ci95"]])
    if not any(len(g) >= 2 for g in groups):
        return None
    return stats.variance_components(groups, ses)


def _combine_parts(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    return "inconclusive"


def _claims_table(members: Sequence[Experiment]) -> list[dict[str, Any]]:
    by_key: dict[tuple[str, str | None], list[dict[str, Any] | None]] = {}
    margins: list[float | None] = []
    for i, m in enumerate(members):
        doc = m.claims or {}
        margins.append(_num_or_none(doc.get("margin")))
        for c in doc.get("claims", []):
            key = (str(c["id"]), c.get("task"))
            by_key.setdefault(key, [None] * len(members))[i] = c
    out = []
    for (cid, task), per in by_key.items():
        first = next(c for c in per if c is not None)
        kind = first["kind"]
        kinds = {c["kind"] for c in per if c is not None}
        if len(kinds) > 1:
            raise CompareError(f"claim {cid} ({task}): kind differs between experiments: {sorted(kinds)}")
        evs = [(c or {}).get("evidence") or {} for c in per]
        margin = None
        if kind == "equivalent":
            cand = [_num_or_none(ev.get("margin")) for ev in evs] + margins
            margin = next((x for x in cand if x is not None), None)
        verdicts = [None if c is None else c.get("verdict") for c in per]
        counts = Counter(v if v is not None else "missing" for v in verdicts)
        row: dict[str, Any] = {
            "id": cid, "task": task, "kind": kind, "statement": first.get("statement", ""),
            "margin": margin, "per_seed": verdicts, "counts": dict(counts),
        }
        part_names = sorted({p for ev in evs for p in (ev.get("parts") or {})})
        if part_names:
            parts = {name: _pool([(ev.get("parts") or {}).get(name) for ev in evs], kind, margin)
                     for name in part_names}
            row["parts"] = parts
            row["pooled"] = {"verdict": _combine_parts([p["verdict"] for p in parts.values()]),
                             "k": max(p["k"] for p in parts.values())}
        else:
            row["pooled"] = _pool(evs, kind, margin)
            row["variance"] = _variance(evs)
        out.append(row)
    out.sort(key=lambda r: (str(r["task"]), _claim_sort_key(r["id"])))
    return out


def _claim_sort_key(cid: str) -> tuple[int, str]:
    digits = "".join(ch for ch in cid if ch.isdigit())
    return (int(digits) if digits else 10**9, cid)


def compare(groups: Sequence[Group], skipped: Sequence[str] = ()) -> dict[str, Any]:
    """Per group: per task, every field and every set's accuracy (and d_base, loss) as mean, sd,
    min, max, k and the per-experiment values; per claim and task, the per-seed verdicts counted
    and the pooled verdict. A plain JSON-able dict (what ``compare.json`` holds)."""
    out_groups = []
    for g in groups:
        warnings = []
        seeds = Counter(_hashable(m.seed) for m in g.members)
        for s, n in seeds.items():
            if n > 1:
                names = ", ".join(m.name for m in g.members if _hashable(m.seed) == s)
                warnings.append(f"seed {s} appears in {n} experiments ({names}): identical runs count "
                                "more than once in the mean")
        tasks = []
        for m in g.members:
            tasks.extend(t for t in m.summary if t not in tasks)
        out_groups.append({
            "label": g.label,
            "params": g.differing,
            "experiments": [{"name": m.name, "rev": m.rev, "kind": m.kind, "seed": m.seed,
                             "baseline": m.baseline} for m in g.members],
            "tasks": {t: _task_table(g.members, t) for t in tasks},
            "claims": _claims_table(g.members),
            "warnings": warnings,
        })
    return {
        "n_experiments": sum(len(g.members) for g in groups),
        "groups": out_groups,
        "students": across_students(groups),
        "pooling": POOLING_NOTE,
        "skipped": list(skipped),
    }


# ---- across students -------------------------------------------------------------------------

STUDENT_PARAM = "base.student"
#: the sets of the paper's cross-model tables (accuracy mean ± sd over seeds), and P's gain over H
STUDENT_SETS = ("H", "G", "W", "P")
GAIN = ("P", "H")
_SIZE_RE = re.compile(r"(?<![\d.])(\d+(?:\.\d+)?)([bm])(?![a-z0-9])", re.IGNORECASE)


def model_size(name: Any) -> tuple[str | None, float | None]:
    """The size written in a model name, as written and in parameters: ``google/gemma-2-9b`` ->
    ("9B", 9e9), ``Qwen/Qwen2.5-1.5B`` -> ("1.5B", 1.5e9), ``smollm2-135m-instruct`` ->
    ("135M", 1.35e8); (None, None) when the name has none (a local folder, an alias)."""
    if not isinstance(name, str):
        return None, None
    hits = _SIZE_RE.findall(name.rsplit("/", 1)[-1])
    if not hits:
        return None, None
    num, unit = hits[-1]
    return f"{num}{unit.upper()}", float(num) * (1e9 if unit.lower() == "b" else 1e6)


def across_students(groups: Sequence[Group]) -> dict[str, Any]:
    """The paper's cross-model view: one row per group (a student and its configuration), per
    task H, G, W, P accuracy as mean ± sd over the group's experiments (seeds), and P's gain
    over H (P - H of each experiment, then mean ± sd). Rows are ordered by model size (from the
    student's name), then name; a student with several configurations gets one row for each,
    labelled with the params that tell them apart."""
    per_student = Counter(_hashable(g.members[0].params.get(STUDENT_PARAM)) for g in groups if g.members)
    rows = []
    for g in groups:
        if not g.members:
            continue
        student = g.members[0].params.get(STUDENT_PARAM)
        students = {_hashable(m.params.get(STUDENT_PARAM)) for m in g.members}
        size, n_params = model_size(student)
        config = {k: v for k, v in g.differing.items() if k != STUDENT_PARAM}
        tasks = dict.fromkeys(t for m in g.members for t in m.summary)  # first-seen order
        table = {}
        for task in tasks:
            entries = [m.summary.get(task) or {} for m in g.members]
            cells = {s: aggregate([set_value(e, s, "acc") for e in entries]) for s in STUDENT_SETS}
            gains = [None if a is None or b is None else a - b
                     for a, b in ((set_value(e, GAIN[0], "acc"), set_value(e, GAIN[1], "acc")) for e in entries)]
            cells["P_minus_H"] = aggregate(gains)
            table[task] = cells
        rows.append({
            "student": student if len(students) == 1 else None,
            "size": size,
            "size_params": n_params,
            "config": config if per_student[_hashable(student)] > 1 else {},
            "group": g.label,
            "seeds": [m.seed for m in g.members],
            "tasks": table,
        })
    rows.sort(key=lambda r: (r["size_params"] is None, r["size_params"] or 0.0, str(r["student"])))
    return {"by": STUDENT_PARAM, "sets": list(STUDENT_SETS), "gain": f"{GAIN[0]} - {GAIN[1]}", "rows": rows}


# ---- rendering -------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}"


def _mean_sd(a: dict[str, Any], scale: float = 100.0, digits: int = 1) -> str:
    if not a or a["mean"] is None:
        return DASH
    m = f"{scale * a['mean']:.{digits}f}"
    return m if a["sd"] is None else f"{m} ± {scale * a['sd']:.{digits}f}"


def _signed(x: float | None) -> str:
    return DASH if x is None else f"{x:+.3f}"


def _pooled_cell(p: dict[str, Any]) -> str:
    if p.get("diff") is None:
        return "no evidence"
    if p.get("ci95") is None:
        return f"{_signed(p['diff'])}, no run-level interval (k {p['k']})"
    lo, hi = p["ci95"]
    cell = f"{_signed(p['diff'])} [{_signed(lo)}, {_signed(hi)}] (k {p['k']}"
    if p.get("tau") is not None:
        cell += f", τ {p['tau']:.3f}, I² {100 * p['i2']:.0f} %"
    return cell + ")"


def _fixed_cell(p: dict[str, Any]) -> str:
    f = p.get("fixed")
    if not f:
        return DASH
    lo, hi = f["ci95"]
    return f"{_signed(f['diff'])} [{_signed(lo)}, {_signed(hi)}] {f['verdict']}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    return markdown_table(header, rows, "l" * len(header))


def _seed_label(e: dict[str, Any]) -> str:
    return f"seed {e['seed']}" if e["seed"] is not None else e["name"]


def render_markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown: per group, per task a table of sets (mean ± sd with the
    per-seed values), then the claims with their per-seed and pooled verdicts."""
    groups = result["groups"]
    parts = [
        "# Experiments compared: seeds and sweeps",
        "",
        f"{result['n_experiments']} experiments in {len(groups)} group(s); a group holds the experiments "
        "whose params are equal except the seed (or the params named with --ignore / --group-by). "
        "Numbers are what each experiment ran: on the offline default, CPU proxies (a 135M model, "
        "easy problems), not the paper's setting.",
        "",
        f"**How this is pooled.** {result['pooling']}",
    ]
    if result.get("skipped"):
        parts += ["", "Skipped (not compared): " + "; ".join(result["skipped"]) + "."]
    for g in groups:
        exps = g["experiments"]
        seeds = ", ".join(str(e["seed"]) for e in exps)
        parts += ["", f"## {g['label']} — {len(exps)} experiment(s), seeds {seeds}", ""]
        parts.append("Experiments: " + ", ".join(
            f"{e['name']} ({e['rev'] if e['rev'] == 'workspace' else e['rev'][:7]}, {_seed_label(e)})"
            for e in exps) + ".")
        for w in g["warnings"]:
            parts += ["", f"**Warning:** {w}."]
        cols = [_seed_label(e) for e in exps]
        for task, t in g["tasks"].items():
            parts += ["", f"### {task}: accuracy (%) per set", ""]
            has_d = any("d_base" in s for s in t["sets"].values())
            has_loss = any("loss" in s for s in t["sets"].values())
            header = ["set", "accuracy mean ± sd", "min – max", "k"] + cols
            header += (["Δ vs base (pp)"] if has_d else []) + (["loss"] if has_loss else [])
            rows = []
            for s, agg in t["sets"].items():
                acc = agg.get("acc")
                if acc is None:
                    row = [s, DASH, DASH, "0"] + [DASH] * len(cols)
                else:
                    rng = DASH if acc["min"] is None else f"{_pct(acc['min'])} – {_pct(acc['max'])}"
                    row = [s, _mean_sd(acc), rng, str(acc["k"])] + [_pct(v) for v in acc["values"]]
                if has_d:
                    row.append(_mean_sd(agg.get("d_base", {})))
                if has_loss:
                    row.append(_mean_sd(agg.get("loss", {}), scale=1.0, digits=3))
                rows.append(row)
            parts.append(_table(header, rows) if rows else "No set has an accuracy.")
            fields = t["fields"]
            if fields:
                bits = []
                for f, a in fields.items():
                    if f == "n_test":
                        vals = sorted({int(v) for v in a["values"] if v is not None})
                        bits.append(f"n_test {', '.join(map(str, vals)) or DASH}")
                    elif f in COUNT_FIELDS:  # counts, not fractions
                        bits.append(f"{f} {_mean_sd(a, scale=1.0, digits=1)}")
                    else:
                        bits.append(f"{f} {_mean_sd(a)} %")
                parts += ["", "Also: " + "; ".join(bits) + " (mean ± sd over the experiments)."]
        parts += ["", "### Claims", ""]
        if not g["claims"]:
            parts.append("No experiment of this group has claims (metrics/claims.json).")
            continue
        rows = []
        for c in g["claims"]:
            per = ", ".join(v or DASH for v in c["per_seed"])
            counts = " / ".join(str(c["counts"].get(v, 0)) for v in VERDICTS)
            if "parts" in c:
                pooled = "; ".join(f"{name}: {_pooled_cell(p)} {p['verdict']}" for name, p in c["parts"].items())
                fixed = "; ".join(f"{name}: {_fixed_cell(p)}" for name, p in c["parts"].items())
            else:
                pooled, fixed = _pooled_cell(c["pooled"]), _fixed_cell(c["pooled"])
            kind = c["kind"] + (f" (±{c['margin']:g})" if c["kind"] == "equivalent" and c["margin"] is not None else "")
            rows.append([c["id"], str(c["task"] or DASH), c["statement"] or DASH, kind, per, counts, pooled,
                         f"**{c['pooled']['verdict']}**", fixed])
        parts.append(_table(["claim", "task", "statement", "kind", "per seed (" + ", ".join(cols) + ")",
                             "holds / contradicted / inconclusive", "runs pooled: diff [95 % CI]",
                             "pooled verdict", "fixed effect (secondary)"],
                            rows))
        vrows = []
        for c in g["claims"]:
            vc = c.get("variance")
            if not vc:
                continue
            cell = {k: DASH if v is None else f"{100 * v['sd']:.1f} ({100 * v['share']:.0f} %)"
                    for k, v in vc["parts"].items()}
            vrows.append([c["id"], str(c["task"] or DASH), str(vc["draws"]), "/".join(map(str, vc["runs"])),
                          cell["data"], cell["sft"], cell["binomial"]])
        if vrows:
            parts += ["", "### Where the variance of each claim's difference comes from", "",
                      "sd in points (share of the variance): *data draw* between the seeds' mean differences "
                      "beyond what their runs' spread explains, *SFT seed* between the runs of one seed beyond "
                      "their test-problem noise, *test problems* each run's own Newcombe se "
                      "(cotshape.core.stats.variance_components; each part truncated at 0).", "",
                      _table(["claim", "task", "data draws", "runs per draw", "data draw", "SFT seed",
                              "test problems"], vrows)]
    parts += render_students(result.get("students") or {})
    return "\n".join(parts) + "\n"


def _student_label(row: dict[str, Any]) -> str:
    name = DASH if row["student"] is None else str(row["student"])
    if row.get("config"):
        name += " (" + ", ".join(f"{k}={_fmt_param(v)}" for k, v in row["config"].items()) + ")"
    return name


def render_students(students: dict[str, Any]) -> list[str]:
    """The cross-model tables (Markdown lines): per task, one row per student."""
    rows_in = students.get("rows") or []
    if not rows_in:
        return []
    sets = students["sets"]
    parts = ["", "## Across students", "",
             f"One row per student ({students['by']}; a student run with several configurations has a row for "
             "each), ordered by the model size in its name. Accuracy (%) as mean ± sd over the experiments "
             "(seeds) of the row, k of them; P − H: P's accuracy minus H's in each experiment, mean ± sd "
             "(percentage points)."]
    tasks = list(dict.fromkeys(t for r in rows_in for t in r["tasks"]))
    for task in tasks:
        rows = []
        for r in rows_in:
            cells = r["tasks"].get(task)
            if cells is None:
                continue
            k = max((cells[s]["k"] for s in sets), default=0)
            rows.append([_student_label(r), r["size"] or DASH, str(k)] + [_mean_sd(cells[s]) for s in sets]
                        + [_mean_sd(cells["P_minus_H"])])
        parts += ["", f"### {task}: accuracy (%) by student", "",
                  _table(["student", "size", "k"] + list(sets) + ["P − H (pp)"], rows)]
    return parts


def write(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``compare.md`` and ``compare.json`` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "compare.md", out_dir / "compare.json"
    write_json(js, result)
    write_text(md, render_markdown(result))
    return md, js
