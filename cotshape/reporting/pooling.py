"""Pooling the groups of :mod:`cotshape.reporting.compare`: mean ± sd of every accuracy across a
group's experiments, and one verdict per claim with the experiment (a draw of the pipeline) as
the unit.

**Pooling.** Per claim and task, the per-seed differences are combined with the seed (one run
of the pipeline) as the unit: :func:`cotshape.core.random_effects.random_effects_difference` (truncated
HKSJ random effects, never narrower than the t-interval over seeds; tau and I² reported); the
fixed-effect :func:`~cotshape.core.random_effects.pooled_difference` stays as a secondary column.
Seeds that answered the same test problems (the same ``base.seed``: :func:`shares_test_problems`)
share that noise; their accuracy claims are pooled as draws x problems instead
(:func:`cotshape.core.random_effects.draws_sharing_problems_interval`). The
claim's rule is applied to the run-level interval (:func:`~cotshape.core.stats.verdict_greater`, ``verdict_less``, ``verdict_equivalent``). A
claim made of parts holds when every part holds, is contradicted when any part is contradicted
and is inconclusive otherwise.

Across students (several preset experiments with different ``base.student``):
:func:`across_students` builds the paper's cross-model table (H, G, W, P and P's gain over H).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from cotshape.core.artifacts import set_sort_key
from cotshape.reporting.compare import (
    PROVENANCE_PATH,
    SEED_PARAM,
    SET_FIELDS,
    CompareError,
    Experiment,
    Group,
    flatten,
    is_number,
    param_key,
)
from cotshape.reporting.formatting import NA

#: the order of the sets in the tables (then step-K, the mixtures, the rest: :func:`set_order`)
SET_ORDER = ("base", "H", "G", "W", "P", "step")

POOLING_NOTE = (
    "Accuracies: mean ± sample sd (ddof 1) over the experiments of a group, with min, max and k "
    "(the number of experiments that have the value). Claims: each seed is one draw of the "
    "pipeline (its own teacher samples and G/W draw, and its SFT runs), so the draw is the unit. A "
    "seed's evidence is its run-level interval when it trained several runs per arm (runs x test "
    "problems, metrics/claims.json), else its one run's paired interval. Per claim and task the "
    "per-seed differences are combined as a random effect (DerSimonian-Laird tau, each "
    "seed's se = its CI half-width / 1.96; truncated Hartung-Knapp-Sidik-Jonkman interval on k - 1 "
    "degrees of freedom, hulled with the t-interval over the k per-seed differences, so it is never "
    "narrower than their spread; cotshape.core.random_effects.random_effects_difference). tau is the sd of "
    "the true difference between runs, I² the share of the spread between seeds that their own "
    "test-problem noise does not explain. One seed gives no run-level interval (inconclusive). The "
    "claim's rule is applied to that interval: greater — the interval lies above 0; less — below 0; "
    "equivalent — inside ±margin. A claim made of parts holds when every part holds, is "
    "contradicted when any part is, and is inconclusive otherwise. The fixed-effect column (an "
    "n-weighted mean, test-problem noise only: what the same students would score on other test "
    "problems, not what another training run would) is secondary. Seeds that share their test "
    "problems (the same base.seed; only base.data_seed and the like differ) share that noise: "
    "their accuracy claims are pooled as draws x problems instead (var = mean of the seeds' "
    "test-problem se² + var of the seed differences / k, Satterthwaite df, hulled with the t-interval "
    "over the seeds; cotshape.core.random_effects.draws_sharing_problems_interval), so the shared "
    "problems' noise is not shrunk by 1/k; the cell then shows both se parts."
)

# ---- comparing -------------------------------------------------------------------------------

def _each(values: Sequence[tuple[str, Any]]) -> str:
    """``name: value, ...`` of one field across experiments (``absent`` where one lacks it)."""
    return ", ".join(f"{name}: {v if v is not None else 'absent'}" for name, v in values)


def code_differences(members: Sequence[Experiment]) -> list[str] | None:
    """The stage-code fingerprints (``code/X.txt``) that are not the same in all ``members``, or
    None when some member records none (rows of ``dvc exp show`` without a code stage)."""
    if not members or any(m.code is None for m in members):
        return None
    paths = sorted({p for m in members for p in m.code})
    return [p for p in paths if len({m.code.get(p) for m in members}) > 1]


def code_warnings(members: Sequence[Experiment]) -> list[str]:
    """One warning naming every stage whose code fingerprint differs between the pooled
    experiments, with each experiment's md5 (first 7 characters); nothing when they agree."""
    differ = code_differences(members)
    if not differ:
        return []
    shown = "; ".join(f"{p} ({_each([(m.name, m.code[p][:7] if p in m.code else None) for m in members])})"
                      for p in differ)
    return [f"pooled experiments ran different stage code: {shown}. Those stages' results can differ "
            "because of the code alone; pool them only if the code change is part of the spread you want "
            "to measure"]


def provenance_warnings(members: Sequence[Experiment]) -> list[str]:
    """What the pooled experiments of a group differ in outside params.yaml: one warning naming
    every field of ``metrics/provenance.json`` (package versions, cotshape commit, hardware,
    batch sizes) whose value is not the same in all of them, with each experiment's value; one
    naming the experiments that record no provenance when others do. Nothing when all agree or
    none records it. When only commits differ in the code and every stage-code fingerprint is
    the same (:func:`code_differences`), the warning says so."""
    recorded = [m for m in members if m.provenance is not None]
    if not recorded:
        return []
    warnings = []
    missing = [m.name for m in members if m.provenance is None]
    if missing:
        warnings.append(f"no {PROVENANCE_PATH} in {', '.join(missing)} (older commits): what produced "
                        "their numbers cannot be compared with the others")
    flats = [(m.name, flatten(m.provenance)) for m in recorded]
    fields = sorted({k for _, f in flats for k in f})
    differ = {}  # field -> its values, where they are not all the same
    for k in fields:
        values = [(name, f.get(k)) for name, f in flats]
        if len({param_key(v) for _, v in values}) > 1:
            differ[k] = values
    if differ:
        same_code = ""
        if any("cotshape_commit" in k for k in differ) and code_differences(members) == []:
            same_code = (f". The commits differ, but all {len(members[0].code)} stage-code fingerprints "
                         "(code/*.txt) are equal: every stage ran the same code")
        shown = "; ".join(f"{k} ({_each(values)})" for k, values in differ.items())
        warnings.append("pooled experiments differ in what produced them: " + shown + same_code
                        + ". Scores can move with versions, hardware and batch sizes; pool them "
                        "only if these differences are part of the spread you want to measure")
    return warnings


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


def set_order(s: str) -> tuple[int, float, str]:
    """The order of the sets in the tables: SET_ORDER, step-K right after "step" by K, then the
    mixtures by fraction, then the rest by name (:func:`cotshape.core.artifacts.set_sort_key`)."""
    return set_sort_key(s, SET_ORDER)


def _num_or_none(x: Any) -> float | None:
    return float(x) if is_number(x) else None


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
    sets = sorted({k for e in entries for k, v in e.items() if isinstance(v, dict)}, key=set_order)
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
    return (is_number(ev.get("diff")) and isinstance(ci, (list, tuple)) and len(ci) == 2
            and all(is_number(c) for c in ci) and ci[0] <= ci[1] and is_number(ev.get("n")) and ev["n"] > 0)


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
    """The run-level pooled entry of one difference (:func:`cotshape.core.random_effects.random_effects_difference`;
    ``ses`` None: the t-interval over the runs) with its verdict; one run: inconclusive, with the reason."""
    from cotshape.core import random_effects, stats

    re = random_effects.random_effects_difference(diffs, ses)
    p: dict[str, Any] = {"diff": re["diff"], "ci95": re["ci95"], "k": re["k"], "tau": re["tau"], "i2": re["i2"],
                         "sd": re["sd"], "per_seed": list(diffs)}
    if re["ci95"] is None:
        p["verdict"], p["reason"] = stats.INCONCLUSIVE, re["reason"]
    else:
        p["verdict"] = _verdict(kind, re["ci95"], margin)
    return p


def _pool(evidences: Sequence[Any], kind: str, margin: float | None, shared_problems: bool = False) -> dict[str, Any]:
    """Pool one difference over the seeds that measured it, the seed (a draw of the pipeline's
    data, with its SFT runs) being the unit; verdict by the claim's kind on that interval.

    Seeds with their own test problems (``base.seed`` differs): :func:`cotshape.core.random_effects.random_effects_difference`
    over :func:`_seed_evidence` (truncated HKSJ). Seeds that share their test problems
    (``shared_problems``: only ``base.data_seed`` and the like differ) and whose evidence has
    ``se_test``: :func:`cotshape.core.random_effects.draws_sharing_problems_interval`, which keeps
    the shared problems' noise whole instead of shrinking it by 1/k. ``method`` says which. The
    fixed-effect combination (test-problem noise only, :func:`~cotshape.core.random_effects.pooled_difference`)
    is kept as the secondary ``fixed`` entry."""
    from cotshape.core import random_effects, stats

    ok = [ev for ev in map(_seed_evidence, evidences) if _evidence_ok(ev)]
    if not ok:
        return {"diff": None, "ci95": None, "k": 0, "n": 0, "verdict": NA}
    diffs = [float(ev["diff"]) for ev in ok]
    fe = random_effects.pooled_difference(diffs, [ev["ci95"] for ev in ok], [int(ev["n"]) for ev in ok])
    if shared_problems and all(is_number(ev.get("se_test")) for ev in ok):
        iv = random_effects.draws_sharing_problems_interval(diffs, [float(ev["se_test"]) for ev in ok],
                                                            min(int(ev["n"]) for ev in ok))
        p = {"diff": iv["diff"], "ci95": iv["ci95"], "k": iv["k"], "tau": None, "i2": None, "sd": iv["sd"],
             "per_seed": diffs, "se_test": iv["se_test"], "se_draws": iv["se_draws"], "df": iv["df"],
             "method": SHARED_METHOD}
        if iv["ci95"] is None:
            p["verdict"], p["reason"] = stats.INCONCLUSIVE, iv["reason"]
        else:
            p["verdict"] = _verdict(kind, iv["ci95"], margin)
    else:
        p = pool_runs(diffs, [stats.ci_se(ev["ci95"]) for ev in ok], kind, margin)
        p["method"] = HKSJ_METHOD
    p.update(n=fe["n"], per_seed_ci95=[list(ev["ci95"]) for ev in ok],
             fixed={**fe, "verdict": _verdict(kind, fe["ci95"], margin)})
    return p


#: how :func:`_pool` combined the seeds (compare.json's ``method`` of a pooled entry)
HKSJ_METHOD = "random effects over independent draws (truncated HKSJ)"
SHARED_METHOD = "draws sharing their test problems (draws x problems: the problems' noise kept whole)"


def shares_test_problems(members: Sequence[Experiment]) -> bool:
    """Whether a group's experiments answered the same test problems: ``prepare`` draws them from
    ``base.seed`` (and the prepare params, which define the group), so they do when every member
    has the same ``base.seed`` (the seeds differ only in ``base.data_seed`` / ``sft_seed`` /
    ``eval_seed``)."""
    return len(members) > 1 and len({param_key(m.params.get(SEED_PARAM)) for m in members}) == 1


def _variance(evidences: Sequence[Any]) -> dict[str, Any] | None:
    """The variance of a claim's run-level difference split into data draw (between seeds), SFT
    seed (between the runs of a seed) and test problems (each run's own se):
    :func:`cotshape.core.random_effects.variance_components` over the seeds' ``per_run`` differences. None
    when no seed kept two runs."""
    from cotshape.core import random_effects, stats

    groups, ses = [], []
    for ev in evidences:
        if isinstance(ev, dict) and ev.get("per_run") and len(ev.get("per_run_ci95") or []) == len(ev["per_run"]):
            groups.append([float(x) for x in ev["per_run"]])
            ses.append([stats.ci_se(ci) ** 2 for ci in ev["per_run_ci95"]])
    if not any(len(g) >= 2 for g in groups):
        return None
    return random_effects.variance_components(groups, ses)


def combine_parts(verdicts: Sequence[str]) -> str:
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    if any(v == "contradicted" for v in verdicts):
        return "contradicted"
    return "inconclusive"


def claims_table(members: Sequence[Experiment]) -> list[dict[str, Any]]:
    """Per claim and task of a group: the per-seed verdicts, their counts and the pooled verdict
    (:func:`_pool`; claims made of parts pooled part by part), from each member's claims.json."""
    by_key: dict[tuple[str, str | None], list[dict[str, Any] | None]] = {}
    margins: list[float | None] = []
    for i, m in enumerate(members):
        doc = m.claims or {}
        margins.append(_num_or_none(doc.get("margin")))
        for c in doc.get("claims", []):
            key = (str(c["id"]), c.get("task"))
            by_key.setdefault(key, [None] * len(members))[i] = c
    out = []
    shared = shares_test_problems(members)
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
            # parts (C1: the loss of G and of W against H) are scored on each draw's own training
            # data, not on shared test problems: independent draws
            parts = {name: _pool([(ev.get("parts") or {}).get(name) for ev in evs], kind, margin)
                     for name in part_names}
            row["parts"] = parts
            row["pooled"] = {"verdict": combine_parts([p["verdict"] for p in parts.values()]),
                             "k": max(p["k"] for p in parts.values())}
        else:
            row["pooled"] = _pool(evs, kind, margin, shared_problems=shared)
            row["variance"] = _variance(evs)
        out.append(row)
    out.sort(key=lambda r: (str(r["task"]), claim_sort_key(r["id"])))
    return out


def claim_sort_key(cid: str) -> tuple[int, str]:
    digits = "".join(ch for ch in cid if ch.isdigit())
    return (int(digits) if digits else 10**9, cid)


def compare(groups: Sequence[Group], skipped: Sequence[str] = ()) -> dict[str, Any]:
    """Per group: per task, every field and every set's accuracy (and d_base, loss) as mean, sd,
    min, max, k and the per-experiment values; per claim and task, the per-seed verdicts counted
    and the pooled verdict. A plain JSON-able dict (what ``compare.json`` holds)."""
    out_groups = []
    for g in groups:
        warnings = []
        seeds = Counter(param_key(m.seed) for m in g.members)
        for s, n in seeds.items():
            if n > 1:
                names = ", ".join(m.name for m in g.members if param_key(m.seed) == s)
                warnings.append(f"seed {s} appears in {n} experiments ({names}): identical runs count "
                                "more than once in the mean")
        warnings.extend(provenance_warnings(g.members))
        warnings.extend(code_warnings(g.members))
        tasks = []
        for m in g.members:
            tasks.extend(t for t in m.summary if t not in tasks)
        out_groups.append({
            "label": g.label,
            "params": g.differing,
            "experiments": [{"name": m.name, "rev": m.rev, "kind": m.kind, "seed": m.seed,
                             "baseline": m.baseline} for m in g.members],
            "tasks": {t: _task_table(g.members, t) for t in tasks},
            "claims": claims_table(g.members),
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
    per_student = Counter(param_key(g.members[0].params.get(STUDENT_PARAM)) for g in groups if g.members)
    rows = []
    for g in groups:
        if not g.members:
            continue
        student = g.members[0].params.get(STUDENT_PARAM)
        students = {param_key(m.params.get(STUDENT_PARAM)) for m in g.members}
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
            "claims": student_claims(g.members),
            "student": student if len(students) == 1 else None,
            "size": size,
            "size_params": n_params,
            "config": config if per_student[param_key(student)] > 1 else {},
            "group": g.label,
            "seeds": [m.seed for m in g.members],
            "tasks": table,
        })
    rows.sort(key=lambda r: (r["size_params"] is None, r["size_params"] or 0.0, str(r["student"])))
    return {"by": STUDENT_PARAM, "sets": list(STUDENT_SETS), "gain": f"{GAIN[0]} - {GAIN[1]}", "rows": rows}


def _claim_cell(verdict: Any, k: int, ev: dict[str, Any]) -> dict[str, Any]:
    cell = {"verdict": verdict, "k": k, "diff": _num_or_none(ev.get("diff")), "ci95": ev.get("ci95"),
            "runs": ev.get("runs")}
    if ev.get("parts"):
        cell["parts"] = {name: {"diff": _num_or_none(pe.get("diff")), "ci95": pe.get("ci95"),
                                "verdict": pe.get("verdict")} for name, pe in ev["parts"].items()}
    return cell


def student_claims(members: Sequence[Experiment]) -> dict[str, dict[str, Any]]:
    """Each claim's verdict for one row of the cross-model table, per task and claim id: with one
    experiment its own verdict, difference and interval from its claims.json (training runs as the
    unit: ``runs`` of them per arm); with several the pooled ones of :func:`claims_table`."""
    out: dict[str, dict[str, Any]] = {}
    if len(members) == 1:
        for c in (members[0].claims or {}).get("claims", []):
            ev = c.get("evidence") or {}
            out.setdefault(str(c.get("task")), {})[str(c["id"])] = _claim_cell(c.get("verdict"), 1, ev)
        return out
    for row in claims_table(members):
        pooled = dict(row["pooled"])
        if "parts" in row:
            pooled["parts"] = row["parts"]
        out.setdefault(str(row["task"]), {})[row["id"]] = _claim_cell(pooled.get("verdict"), pooled.get("k", len(members)), pooled)
    return out
