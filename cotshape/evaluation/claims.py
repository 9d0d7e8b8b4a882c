"""The paper's claims, judged on one run's numbers: paired comparisons, verdicts and the summary.

Inputs (all written by earlier stages; nothing here knows about DVC paths):

* per set, the evaluation records (one per test problem: ``problem_id``, ``correct``), for the
  untrained student (``base``) and every trained set (H, G, W, P, step, ``mix-p``);
* the closeness metrics of the task (:func:`cotshape.sft.closeness.loss_intervals`): per set the base
  student's mean per-token loss, its interval, and the difference to H with its interval;
* the flawed fractions of the mixture curve; fraction 0 is the mixtures' base set itself
  (``degrade.base_set``), so it is not trained twice.

Every comparison of two sets is *paired*: both students answered the same test problems, and the
difference of their accuracies gets Newcombe's paired score 95 % interval and an exact McNemar
p-value (:mod:`cotshape.core.paired_tests`); closeness differences and the mixture slope get seeded bootstrap
intervals. Each set is trained ``sft.runs`` times (``sft.runs_by_set`` may give a set more); a
comparison pairs run R of one set with run R of the other (the same SFT seed; the untrained
student is one run, paired with every run; of two sets with unequal runs, the runs both have), and
its ``ci95`` takes the training run as the unit, with the runs and the test problems both random
draws (:func:`cotshape.core.random_effects.runs_by_problems_interval`: the runs share the test problems,
so that noise does not shrink with more runs; never narrower than the t-interval over the runs). With one run per arm there
is no run-level interval (``ci95`` None): the accuracy claims are then inconclusive and say why. A
claim is

* ``holds`` when its interval excludes the alternative (for "A > B": the whole interval of
  A - B lies above 0; for "within ±margin": the interval lies inside the margin),
* ``contradicted`` when the interval excludes the claim itself,
* ``inconclusive`` otherwise - a tie, or too few test problems to tell.

The claims (ids as in the issue tracker and the report):

* C1 the untrained student's loss on G and on W is below its loss on H;
* C2 accuracy after SFT on G > on H;  C3 W > H;  C4 P > H;
* C5 25 % completely flawed CoTs stay within ±margin of 0 % flawed;
* C6 accuracy falls as the flawed fraction rises (negative OLS slope over the fractions).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cotshape.core import bootstrap, paired_tests, random_effects, stats
from cotshape.core.errors import RecordError

BASE = "base"
#: the sets whose chains of thought get step-level correctness (the sets written by hand or by a model)
STEP_SETS = ("H", "G", "W", "P")

STATEMENTS = {
    "C1": "The untrained student's per-token loss on G and on W is below its loss on H "
          "(model-written CoTs sit closer to the student's distribution).",
    "C2": "Fine-tuning on G (correct teacher CoTs) gives higher accuracy than fine-tuning on H (human solutions).",
    "C3": "Fine-tuning on W (teacher CoTs with wrong final answers) gives higher accuracy than fine-tuning on H.",
    "C4": "Fine-tuning on P (human solutions paraphrased by a model) gives higher accuracy than fine-tuning on H.",
    "C5": "Replacing 25 % of the correct CoTs with completely flawed ones keeps accuracy within the margin of 0 %.",
    "C6": "Accuracy falls as the fraction of completely flawed CoTs rises.",
}


def correctness(records: Sequence[Mapping[str, Any]], where: str = "evaluation records") -> dict[str, bool]:
    """``problem_id -> correct`` of one set's evaluation records (types checked)."""
    out: dict[str, bool] = {}
    for i, r in enumerate(records, 1):
        pid, ok = r.get("problem_id"), r.get("correct")
        if not isinstance(pid, str) or not isinstance(ok, bool):
            raise RecordError(f"{where}: record {i}: needs a string problem_id and a boolean correct")
        if pid in out:
            raise RecordError(f"{where}: record {i}: problem {pid!r} appears twice")
        out[pid] = ok
    return out


def correctness_by_run(records: Sequence[Mapping[str, Any]], where: str = "evaluation records") -> list[dict[str, bool]]:
    """``[problem_id -> correct]`` per training run (the record's ``run``; none: run 0), by run."""
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for i, r in enumerate(records, 1):
        run = r.get("run", 0)
        if isinstance(run, bool) or not isinstance(run, int) or run < 0:
            raise RecordError(f"{where}: record {i}: run must be an integer >= 0, got {run!r}")
        groups.setdefault(run, []).append(r)
    if sorted(groups) != list(range(len(groups))):
        raise RecordError(f"{where}: runs {sorted(groups)} are not 0..{len(groups) - 1}")
    return [correctness(groups[k], f"{where} (run {k})") for k in sorted(groups)]


def paired_runs(a: Sequence[Mapping[str, bool]], b: Sequence[Mapping[str, bool]], seed: int = 0,
                n_boot: int = 10000) -> dict[str, Any]:
    """B - A over training runs: run R of A paired with run R of B (a single run, e.g. the
    untrained student, is paired with every run of the other; when both arms have several runs
    but not as many, ``sft.runs_by_set``, the runs 0..K-1 both have are paired and the
    ``runs_a`` / ``runs_b`` trained are recorded). Each run's :func:`paired` result is
    in ``per_run_detail``; ``per_run`` / ``per_run_ci95`` are its differences and intervals;
    ``diff``, ``ci95`` (None for one run, with ``reason``), ``se_test``, ``se_runs``, ``df``, ``sd``
    and ``t_ci95`` are :func:`cotshape.core.random_effects.runs_by_problems_interval` of the runs x problems
    table of differences; ``runs`` is their number, ``n`` the test problems; ``acc_a`` / ``acc_b``
    the mean accuracies."""
    if not a or not b:
        raise ValueError("paired_runs needs at least one run on each side")
    k = max(len(a), len(b)) if 1 in (len(a), len(b)) else min(len(a), len(b))
    runs_a = [a[r if len(a) > 1 else 0] for r in range(k)]
    runs_b = [b[r if len(b) > 1 else 0] for r in range(k)]
    detail = [paired(x, y, seed=seed + r, n_boot=n_boot) for r, (x, y) in enumerate(zip(runs_a, runs_b, strict=True))]
    ids = sorted(runs_a[0])
    for run in (*runs_a, *runs_b):
        if set(run) != set(ids):
            raise RecordError("paired comparison on different test problems: the runs of a set answered other problems")
    iv = random_effects.runs_by_problems_interval([[int(y[i]) - int(x[i]) for i in ids]
                                          for x, y in zip(runs_a, runs_b, strict=True)])
    trained = {"runs_a": len(a), "runs_b": len(b)} if 1 not in (len(a), len(b)) and len(a) != len(b) else {}
    return _with_interval({
        "runs": k, **trained, "n": detail[0]["n"], "diff": iv["mean"],
        "acc_a": sum(d["acc_a"] for d in detail) / k, "acc_b": sum(d["acc_b"] for d in detail) / k,
        "per_run": [d["diff"] for d in detail], "per_run_ci95": [d["ci95"] for d in detail],
        "per_run_p": [d["p_mcnemar"] for d in detail],
        "per_run_detail": detail,
    }, iv, "paired differences")


def _with_interval(out: dict[str, Any], iv: dict[str, Any], what: str) -> dict[str, Any]:
    """``out`` with the run-level interval of :func:`cotshape.core.random_effects.runs_by_problems_interval`."""
    out.update(ci95=iv["ci95"], se_test=iv["se_test"], se_runs=iv["se_runs"], df=iv["df"], sd=iv["sd"],
               t_ci95=iv["t_ci95"],
               ci95_is=(f"training runs and test problems (two-way random effects over the run-level {what})"
                        if iv["ci95"] is not None else "none: one training run per arm"))
    if "reason" in iv:
        out["reason"] = iv["reason"]
    return out


def paired(a: Mapping[str, bool], b: Mapping[str, bool], seed: int = 0, n_boot: int = 10000) -> dict[str, Any]:
    """:func:`cotshape.core.paired_tests.paired_accuracy_diff` of B - A on the problems both answered; the
    two must have answered the same problems (a comparison on different problems is not paired)."""
    if set(a) != set(b):
        raise RecordError(f"paired comparison on different test problems ({len(set(a) ^ set(b))} differ)")
    ids = sorted(a)
    return paired_tests.paired_accuracy_diff([a[i] for i in ids], [b[i] for i in ids], n_boot=n_boot, seed=seed)


def _verdict(kind: str, ci95: Sequence[float] | None, margin: float | None = None) -> str:
    if ci95 is None:  # one training run: no run-level interval
        return "inconclusive"
    if kind == "greater":
        return stats.verdict_greater(ci95)
    if kind == "less":
        return stats.verdict_less(ci95)
    return stats.verdict_equivalent(ci95, float(margin or 0.0))


def _combine(verdicts: Sequence[str]) -> str:
    """All parts hold -> holds; any part contradicted -> contradicted; else inconclusive."""
    if verdicts and all(v == "holds" for v in verdicts):
        return "holds"
    return "contradicted" if "contradicted" in verdicts else "inconclusive"


def _claim(cid: str, task: str, kind: str, evidence: dict[str, Any] | None, missing: str = "") -> dict[str, Any]:
    if evidence is None:
        return {"id": cid, "task": task, "statement": STATEMENTS[cid], "kind": kind, "verdict": "inconclusive",
                "evidence": {"missing": missing}}
    if "parts" in evidence:
        verdict = _combine([_verdict(kind, p["ci95"]) for p in evidence["parts"].values()])
    else:
        verdict = _verdict(kind, evidence["ci95"], evidence.get("margin"))
    return {"id": cid, "task": task, "statement": STATEMENTS[cid], "kind": kind, "verdict": verdict,
            "evidence": evidence}


def mixture_sets(fractions: Sequence[float], base_set: str) -> list[tuple[float, str]]:
    """``(fraction, set name)`` of the mixture curve: 0 is the base set itself, then ``mix-p``."""
    from cotshape.core.config import set_name

    return [(0.0, base_set)] + [(float(p), set_name(p)) for p in sorted(fractions) if float(p) > 0]


def judge_task(
    task: str,
    evals: Mapping[str, Mapping[str, bool] | None],
    closeness: Mapping[str, Any] | None,
    fractions: Sequence[float],
    base_set: str,
    margin: float,
    seed: int = 0,
    n_boot: int = 10000,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """The claims of one task and every set's paired comparison against H and the base student.

    ``evals`` maps a set name to its ``[problem_id -> correct]`` per training run (None: not
    evaluated, e.g. an empty training set; a plain mapping: one run). Returns ``(claims, comparisons)`` where
    ``comparisons[set]`` holds ``vs_base`` and ``vs_H`` (each a :func:`paired_runs` result, B = the
    set) where both exist.
    """
    # one run given as a plain mapping (problem_id -> correct) is a list of one run
    evals = {k: [v] if isinstance(v, Mapping) else v for k, v in evals.items()}

    def pair(a: str, b: str) -> dict[str, Any] | None:
        if not evals.get(a) or not evals.get(b):
            return None
        r = paired_runs(evals[a], evals[b], seed=seed, n_boot=n_boot)  # type: ignore[arg-type]
        return {"a": a, "b": b, **r}

    comparisons: dict[str, dict[str, Any]] = {}
    for s in evals:
        if s == BASE:
            continue
        comparisons[s] = {k: v for k, v in (("vs_base", pair(BASE, s)), ("vs_H", pair("H", s) if s != "H" else None))
                          if v is not None}

    claims: list[dict[str, Any]] = []
    close = closeness or {}
    parts = {}
    for s in ("G", "W"):
        c = close.get(s) if isinstance(close.get(s), dict) else None
        if c and "minus_ref" in c:
            parts[s] = {"diff": c["minus_ref"], "ci95": c["minus_ref_ci95"], "n": c.get("n_examples"),
                        "loss_H": (close.get("H") or {}).get("mean_loss"), "loss": c.get("mean_loss")}
    claims.append(_claim("C1", task, "greater", {"parts": parts, "diff_is": "loss(H) - loss(set)"} if parts else None,
                         "no closeness of G or W against H"))
    for cid, s in (("C2", "G"), ("C3", "W"), ("C4", "P")):
        # the set-vs-H comparison computed above for the tables; not paired a second time
        claims.append(_claim(cid, task, "greater", comparisons.get(s, {}).get("vs_H"), f"no evaluation of H or {s}"))

    curve = [(p, name) for p, name in mixture_sets(fractions, base_set) if evals.get(name)]
    at = dict(curve)
    c5 = pair(at[0.0], at[0.25]) if 0.0 in at and 0.25 in at else None
    if c5 is not None:
        c5["margin"] = margin
    claims.append(_claim("C5", task, "equivalent", c5, "no evaluation at 0 % or 25 % flawed"))
    c6 = mixture_slope(task, evals, curve, seed=seed, n_boot=n_boot) if len({p for p, _ in curve}) >= 2 else None
    claims.append(_claim("C6", task, "less", c6, "fewer than two points on the mixture curve"))
    return claims, comparisons


def mixture_slope(task: str, evals: Mapping[str, Sequence[Mapping[str, bool]] | None],
                  curve: Sequence[tuple[float, str]], seed: int = 0, n_boot: int = 10000) -> dict[str, Any]:
    """C6's evidence: per training run R the OLS slope of accuracy over the flawed fraction (run R
    of every set of the curve, on the same problems; paired bootstrap interval), and the interval
    of the mean slope with runs and problems as random draws (each problem's contrast
    ``sum_j w_j correct_j``, :func:`cotshape.core.random_effects.runs_by_problems_interval`)."""
    names = [name for _, name in curve]
    counts = [len(evals[n]) for n in names]  # type: ignore[arg-type]
    several = [c for c in counts if c > 1]
    k = min(several) if several else 1  # runs 0..k-1 of every set (sft.runs_by_set may give some more)
    ids = sorted(evals[names[0]][0])  # type: ignore[index]
    xs = [float(p) for p, _ in curve]
    centred = [x - sum(xs) / len(xs) for x in xs]
    weights = [c / sum(c * c for c in centred) for c in centred]  # slope = sum_j w_j acc_j
    per, contrasts = [], []
    for r in range(k):
        rows = []
        for name in names:
            run = evals[name][r if len(evals[name]) > 1 else 0]  # type: ignore[index,arg-type]
            if set(run) != set(ids):
                raise RecordError(f"{task}: {name} was evaluated on other test problems than {names[0]}")
            rows.append([run[i] for i in ids])
        per.append(bootstrap.paired_slope(rows, xs, n_boot=n_boot, seed=seed + r))
        contrasts.append([sum(w * row[i] for w, row in zip(weights, rows, strict=True)) for i in range(len(ids))])
    iv = random_effects.runs_by_problems_interval(contrasts)  # the mean of each problem's contrast is the slope
    return _with_interval({
        "diff": iv["mean"], "n": per[0]["n"], "runs": k, "diff_is": "OLS slope of accuracy over p",
        **({"runs_by_set": dict(zip(names, counts, strict=True))} if len(set(several)) > 1 else {}),
        "per_run": [sl["slope"] for sl in per], "per_run_ci95": [sl["ci95"] for sl in per],
        "fractions": per[0]["xs"], "sets": names,
        "accuracies": [sum(sl["accuracies"][j] for sl in per) / k for j in range(len(names))]}, iv, "slopes")


def variance_breakdown(task: str, evals_metrics: Mapping[str, Mapping[str, Any] | None],
                       claims: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Where the run-to-run variance of this run's numbers comes from, on its one data draw:
    per set (the accuracy of each training run, its Wilson se) and per accuracy claim (the run-level
    paired differences, their Newcombe se), :func:`cotshape.core.random_effects.variance_components` split
    into test problems (binomial) and SFT seed. The data draw's part needs several data seeds
    (``cotshape compare`` over ``-S base.data_seed=N`` experiments). Sets and claims with fewer
    than two runs are left out."""
    out: dict[str, Any] = {"sets": {}, "claims": {}}
    for s, m in evals_metrics.items():
        runs = (m or {}).get("per_run") or []
        if len(runs) >= 2:
            out["sets"][s] = random_effects.variance_components(
                [[r["accuracy"] for r in runs]], [[stats.ci_se(r["ci95"]) ** 2 for r in runs]])
    for c in claims:
        ev = c.get("evidence") or {}
        if c.get("task") == task and c["id"] in ("C2", "C3", "C4", "C5") and len(ev.get("per_run") or []) >= 2:
            out["claims"][c["id"]] = random_effects.variance_components(
                [list(ev["per_run"])], [[stats.ci_se(ci) ** 2 for ci in ev["per_run_ci95"]]])
            out["claims"][c["id"]]["contrast"] = f"{ev['b']} - {ev['a']}"
    return out


def power(claims: Sequence[Mapping[str, Any]], task: str, cid: str = "C2") -> dict[str, Any] | None:
    """The half-width of a claim's run-level 95 % interval (points are fractions here): the
    smallest difference the run can tell from 0. None without a run-level interval."""
    for c in claims:
        ev = c.get("evidence") or {}
        if c["id"] == cid and c.get("task") == task and ev.get("ci95"):
            lo, hi = ev["ci95"]
            return {"claim": cid, "half_width": (hi - lo) / 2, "runs": ev.get("runs")}
    return None


def summary_entry(
    evals_metrics: Mapping[str, Mapping[str, Any] | None],
    comparisons: Mapping[str, Mapping[str, Any]],
    closeness: Mapping[str, Any] | None,
    steps: Mapping[str, Mapping[str, Any]] | None = None,
    verify: Mapping[str, Any] | None = None,
    select: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One task's entry of ``metrics/summary.json``: one column per number ``dvc exp show``
    needs to compare two experiments, no more (issue #13: at most 150 columns). Per set:
    ``acc``; ``ci``, its 95 % Wilson interval as one text value ``"[lo, hi]"`` (DVC drops lists
    and would show two numeric bounds as two columns); ``loss``, the closeness; ``step_acc``, the
    share of correct arithmetic steps. Paired differences (against the base student and H) are
    derived from two ``acc`` columns and judged with their intervals in ``metrics/claims.json``
    and the report; they are not repeated here. ``comparisons`` is accepted for the callers and
    unused."""
    out: dict[str, Any] = {}
    if verify:
        out["teacher_acc"] = verify.get("teacher_accuracy")
    if select and select.get("problems"):
        # the share of training problems with both a G and a W (the problems every set is trained
        # on when select.balance is true: metrics/stages/select/ has the counts)
        out["both_frac"] = select.get("with_both", 0) / select["problems"]
    close = closeness or {}
    for s, m in evals_metrics.items():
        if not m or m.get("skipped"):
            continue
        out.setdefault("n_test", m.get("n"))
        if s != "base":  # training runs per set (the untrained student is one model)
            out["runs"] = max(out.get("runs", 0), m.get("runs", 1))
        lo, hi = m["ci95"]
        e: dict[str, Any] = {"acc": m["accuracy"], "ci": f"[{lo:.3f}, {hi:.3f}]"}
        c = close.get(s)
        if isinstance(c, dict) and "mean_loss" in c:
            e["loss"] = c["mean_loss"]
        if steps and s in steps and steps[s].get("step_accuracy") is not None:
            e["step_acc"] = steps[s]["step_accuracy"]
        out[s] = e
    return out


def claim_sets(claim: Mapping[str, Any], base_set: str) -> list[str]:
    """The training sets a claim's numbers come from: its two arms, C1's parts and H, or C6's mixtures."""
    ev = claim.get("evidence") or {}
    if isinstance(ev.get("sets"), list):  # C6: the sets of the curve
        return [n for n in ev["sets"] if n != BASE]
    if "fractions" in ev:
        return [name for p, name in mixture_sets(ev["fractions"], base_set)]
    names = [ev[k] for k in ("a", "b") if isinstance(ev.get(k), str)]
    if isinstance(ev.get("parts"), dict):
        names += [*ev["parts"], "H"]
    return [n for n in dict.fromkeys(names) if n != BASE]


def contamination(claim: Mapping[str, Any], doc: Mapping[str, Any] | None, base_set: str) -> dict[str, Any] | None:
    """What decontaminate@T (``doc``: its metrics) found in the sets of ``claim``, or None when they
    are clean: with ``action: report`` the flagged count of each set (the claim is computed on
    contaminated sets), with ``action: drop`` how many problems every set lost before SFT."""
    if not doc:
        return None
    if doc.get("action") == "drop":
        if not doc.get("dropped"):
            return None
        return {"action": "drop", "dropped": doc["dropped"], "trained": doc.get("trained"),
                "note": f"{doc['dropped']} problems flagged by decontaminate were left out of every set before SFT"}
    per_set = doc.get("sets") or {}
    flagged = {s: per_set[s]["flagged"] for s in claim_sets(claim, base_set) if per_set.get(s, {}).get("flagged")}
    if not flagged:
        return None
    where = ", ".join(f"{s} {n}/{per_set[s]['records']}" for s, n in flagged.items())
    return {"action": "report", "flagged": flagged,
            "note": f"computed on sets that overlap the test problems (decontaminate, flagged records: {where})"}


def judge_run(
    tasks: Sequence[str],
    sets: Sequence[str],
    fractions: Sequence[float],
    base_set: str,
    eval_dir: str | os.PathLike,
    metrics_dir: str | os.PathLike,
    sets_dir: str | os.PathLike,
    margin: float,
    seed: int = 0,
    n_boot: int = 10000,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Judge every task of a run from the files the stages wrote.

    Reads ``eval_dir/{task}-{set}.jsonl`` (evaluation records, ``run`` in each), ``metrics_dir/eval|closeness|
    verify|select/...json`` and the training sets ``sets_dir/{task}/{set}.jsonl`` (restricted to
    ``ids.json`` when present) for the step-level correctness of H, G, W and P. Returns
    ``(claims_doc, summary_doc, comparisons)``: ``claims_doc`` is what ``metrics/claims.json``
    holds (the claims, and per task the :func:`variance_breakdown` with the :func:`power`), ``summary_doc`` what ``metrics/summary.json`` holds, ``comparisons[task][set]`` the
    paired comparisons against the base student and H.
    """
    from cotshape.core.artifacts import IDS_FILE
    from cotshape.core.records import read_ids, read_json, read_jsonl, restrict_to_ids
    from cotshape.data.steps import step_stats

    eval_dir, metrics_dir, sets_dir = Path(eval_dir), Path(metrics_dir), Path(sets_dir)

    def optional_json(path: Path) -> Any:
        return read_json(path) if path.exists() else None

    all_sets = [BASE, *sets] + [name for p, name in mixture_sets(fractions, base_set) if p > 0]
    claims: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    variance: dict[str, Any] = {}
    for t in tasks:
        ev_metrics = {s: optional_json(metrics_dir / "eval" / f"{t}-{s}.json") for s in all_sets}
        evals: dict[str, list[dict[str, bool]] | None] = {}
        for s in all_sets:
            m, path = ev_metrics[s], eval_dir / f"{t}-{s}.jsonl"
            evals[s] = (correctness_by_run(read_jsonl(path), str(path))
                        if m is not None and not m.get("skipped") and path.exists() else None)
        closeness = optional_json(metrics_dir / "closeness" / f"{t}.json")
        task_claims, cmp = judge_task(t, evals, closeness, fractions, base_set, margin, seed=seed, n_boot=n_boot)
        decon = optional_json(metrics_dir / "decontaminate" / f"{t}.json")
        for c in task_claims:
            found = contamination(c, decon, base_set)
            if found:
                c["contamination"] = found
        claims += task_claims
        comparisons[t] = cmp
        variance[t] = {**variance_breakdown(t, ev_metrics, task_claims), "power": power(task_claims, t)}
        ids_path = sets_dir / t / IDS_FILE
        ids = read_ids(ids_path) if ids_path.exists() else None
        steps = {}
        for s in STEP_SETS:
            path = sets_dir / t / f"{s}.jsonl"
            if path.exists():
                recs = read_jsonl(path, required=("completion",))
                recs = restrict_to_ids(recs, ids) if ids is not None else recs
                steps[s] = step_stats(r["completion"] for r in recs)
        summary[t] = summary_entry(ev_metrics, cmp, closeness, steps,
                                   optional_json(metrics_dir / "verify" / f"{t}.json"),
                                   optional_json(metrics_dir / "select" / f"{t}.json"))
        comparisons[t]["_steps"] = steps
    return {"margin": margin, "claims": claims, "variance": variance}, summary, comparisons
