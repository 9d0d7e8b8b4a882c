"""The comparison of :func:`cotshape.reporting.pooling.compare` as Markdown and JSON
(``compare/compare.md``, ``compare/compare.json``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cotshape.core.records import write_json, write_text
from cotshape.core.stats import CONTRADICTED, HOLDS, INCONCLUSIVE
from cotshape.reporting.compare import format_param
from cotshape.reporting.formatting import DASH, markdown_table, pct_value
from cotshape.reporting.pooling import claim_sort_key, set_order

#: the per-seed verdict counts' order
VERDICTS = (HOLDS, CONTRADICTED, INCONCLUSIVE)
#: task-level summary fields that are counts (the others are fractions, shown in %)
COUNT_FIELDS = frozenset({"compared", "runs"})

# ---- rendering -------------------------------------------------------------------------------

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
    if p.get("se_draws") is not None:  # draws sharing their test problems (pooling.SHARED_METHOD)
        cell += f", shared problems: se {100 * p['se_test']:.1f} test + {100 * p['se_draws']:.1f} draws, pts"
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
            # pooling's order (base, H, G, W, P, step-K, mixtures), also for a compare.json read back
            for s, agg in sorted(t["sets"].items(), key=lambda kv: set_order(kv[0])):
                acc = agg.get("acc")
                if acc is None:
                    row = [s, DASH, DASH, "0"] + [DASH] * len(cols)
                else:
                    rng = DASH if acc["min"] is None else f"{pct_value(acc['min'])} – {pct_value(acc['max'])}"
                    row = [s, _mean_sd(acc), rng, str(acc["k"])] + [pct_value(v) for v in acc["values"]]
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
                      "(cotshape.core.random_effects.variance_components; each part truncated at 0).", "",
                      _table(["claim", "task", "data draws", "runs per draw", "data draw", "SFT seed",
                              "test problems"], vrows)]
    parts += render_students(result.get("students") or {})
    return "\n".join(parts) + "\n"


def _student_label(row: dict[str, Any]) -> str:
    name = DASH if row["student"] is None else str(row["student"])
    if row.get("config"):
        name += " (" + ", ".join(f"{k}={format_param(v)}" for k, v in row["config"].items()) + ")"
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
        ids = sorted({cid for r in rows_in for cid in (r.get("claims") or {}).get(task, {})}, key=claim_sort_key)
        crows = []
        for r in rows_in:
            cl = (r.get("claims") or {}).get(task)
            if cl:
                crows.append([_student_label(r)] + [_student_claim_cell(cl.get(cid)) for cid in ids])
        if crows:
            parts += ["", f"### {task}: claims by student", "",
                      "Each claim's verdict and difference [95 % interval] for each student: with one experiment "
                      "its own (training runs as the unit, `runs` per arm), with several the pooled one (k "
                      "experiments). C1 is the untrained student's loss on H minus on G and on W (nats per "
                      "token); accuracy claims are differences of accuracy (fractions); C6 a slope.", "",
                      _table(["student"] + ids, crows)]
    return parts


def _student_claim_cell(c: dict[str, Any] | None) -> str:
    if not c:
        return DASH
    if c.get("parts"):
        body = "; ".join(f"{name} {_interval(p)}" for name, p in c["parts"].items())
    else:
        body = _interval(c)
    runs = f", runs {c['runs']}" if c.get("runs") is not None else ""
    k = f", k {c['k']}" if c.get("k", 1) > 1 else ""
    return f"**{c.get('verdict') or DASH}** {body}{runs}{k}"


def _interval(c: dict[str, Any]) -> str:
    if c.get("diff") is None:
        return "no evidence"
    if not c.get("ci95"):
        return f"{_signed(c['diff'])} (no interval)"
    lo, hi = c["ci95"]
    return f"{_signed(c['diff'])} [{_signed(lo)}, {_signed(hi)}]"


def write(result: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write ``compare.md`` and ``compare.json`` into ``out_dir``, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / "compare.md", out_dir / "compare.json"
    write_json(js, result)
    write_text(md, render_markdown(result))
    return md, js
