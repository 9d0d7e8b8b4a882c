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
p-value (:mod:`cotshape.core.stats`); closeness differences and the mixture slope get seeded bootstrap
intervals. A claim is

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

from cotshape.core import stats
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


def paired(a: Mapping[str, bool], b: Mapping[str, bool], seed: int = 0, n_boot: int = 10000) -> dict[str, Any]:
    """:func:`cotshape.core.stats.paired_accuracy_diff` of B - A on the problems both answered; the
    two must have answered the same problems (a comparison on different problems is not paired)."""
    if set(a) != set(b):
        raise RecordError(f"paired comparison on different test problems ({len(set(a) ^ set(b))} differ)")
    ids = sorted(a)
    return stats.paired_accuracy_diff([a[i] for i in ids], [b[i] for i in ids], n_boot=n_boot, seed=seed)


def _verdict(kind: str, ci95: Sequence[float], margin: float | None = None) -> str:
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

    ``evals`` maps a set name to its ``problem_id -> correct`` (None: not evaluated, e.g. an empty
    training set). Returns ``(claims, comparisons)`` where ``comparisons[set]`` holds
    ``vs_base`` and ``vs_H`` (each a :func:`paired` result, B = the set) where both exist.
    """
    def pair(a: str, b: str) -> dict[str, Any] | None:
        if evals.get(a) is None or evals.get(b) is None:
            return None
        r = paired(evals[a], evals[b], seed=seed, n_boot=n_boot)  # type: ignore[arg-type]
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

    curve = [(p, name) for p, name in mixture_sets(fractions, base_set) if evals.get(name) is not None]
    at = dict(curve)
    c5 = pair(at[0.0], at[0.25]) if 0.0 in at and 0.25 in at else None
    if c5 is not None:
        c5["margin"] = margin
    claims.append(_claim("C5", task, "equivalent", c5, "no evaluation at 0 % or 25 % flawed"))
    if len({p for p, _ in curve}) >= 2:
        ids = sorted(evals[curve[0][1]])  # type: ignore[arg-type]
        rows = []
        for _, name in curve:
            if set(evals[name]) != set(ids):  # type: ignore[arg-type]
                raise RecordError(f"{task}: {name} was evaluated on other test problems than {curve[0][1]}")
            rows.append([evals[name][i] for i in ids])  # type: ignore[index]
        sl = stats.paired_slope(rows, [p for p, _ in curve], n_boot=n_boot, seed=seed)
        c6 = {"diff": sl["slope"], "ci95": sl["ci95"], "n": sl["n"], "diff_is": "OLS slope of accuracy over p",
              "fractions": sl["xs"], "accuracies": sl["accuracies"], "sets": [name for _, name in curve]}
    else:
        c6 = None
    claims.append(_claim("C6", task, "less", c6, "fewer than two points on the mixture curve"))
    return claims, comparisons


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
        lo, hi = m["ci95"]
        e: dict[str, Any] = {"acc": m["accuracy"], "ci": f"[{lo:.3f}, {hi:.3f}]"}
        c = close.get(s)
        if isinstance(c, dict) and "mean_loss" in c:
            e["loss"] = c["mean_loss"]
        if steps and s in steps and steps[s].get("step_accuracy") is not None:
            e["step_acc"] = steps[s]["step_accuracy"]
        out[s] = e
    return out


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

    Reads ``eval_dir/{task}-{set}.jsonl`` (evaluation records), ``metrics_dir/eval|closeness|
    verify|select/...json`` and the training sets ``sets_dir/{task}/{set}.jsonl`` (restricted to
    ``ids.json`` when present) for the step-level correctness of H, G, W and P. Returns
    ``(claims_doc, summary_doc, comparisons)``: ``claims_doc`` is what ``metrics/claims.json``
    holds, ``summary_doc`` what ``metrics/summary.json`` holds, ``comparisons[task][set]`` the
    paired comparisons against the base student and H.
    """
    from cotshape.core.records import read_ids, read_json, read_jsonl, restrict_to_ids
    from cotshape.data.steps import step_stats

    eval_dir, metrics_dir, sets_dir = Path(eval_dir), Path(metrics_dir), Path(sets_dir)

    def optional_json(path: Path) -> Any:
        return read_json(path) if path.exists() else None

    all_sets = [BASE, *sets] + [name for p, name in mixture_sets(fractions, base_set) if p > 0]
    claims: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    comparisons: dict[str, Any] = {}
    for t in tasks:
        ev_metrics = {s: optional_json(metrics_dir / "eval" / f"{t}-{s}.json") for s in all_sets}
        evals: dict[str, dict[str, bool] | None] = {}
        for s in all_sets:
            m, path = ev_metrics[s], eval_dir / f"{t}-{s}.jsonl"
            evals[s] = (correctness(read_jsonl(path), str(path))
                        if m is not None and not m.get("skipped") and path.exists() else None)
        closeness = optional_json(metrics_dir / "closeness" / f"{t}.json")
        task_claims, cmp = judge_task(t, evals, closeness, fractions, base_set, margin, seed=seed, n_boot=n_boot)
        claims += task_claims
        comparisons[t] = cmp
        ids_path = sets_dir / t / "ids.json"
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
    return {"margin": margin, "claims": claims}, summary, comparisons
