"""Re-pool a committed comparison (compare/compare.json) with the runs as the unit, when its
experiments are gone (`dvc exp gc`, another machine) and `cotshape compare` cannot reread them.

Each claim's per-seed difference is rebuilt from the per-seed numbers the comparison kept (the
accuracy of every set, the closeness loss of H, G and W): C2-C4 set - H, C5 mix-0.25 minus the
mixtures' base set, C6 the OLS slope of accuracy over the flawed fraction, C1 loss(H) - loss(set).
The per-seed intervals were not kept, so the run-level interval is the t-interval over the seeds
(cotshape.core.random_effects.random_effects_difference without standard errors: tau and I^2 unknown); the
interval the comparison had (fixed effect, test-problem noise only) becomes the secondary column.
New comparisons keep every seed's interval (``per_seed_ci95``) and need no such step.

With ``--claims``, one metrics/claims.json per experiment of the group (in the group's order:
kept beside the comparison, or ``git show REV:metrics/claims.json``), the claims are pooled again
from that full evidence by ``cotshape compare``'s own code (:func:`cotshape.reporting.pooling.claims_table`):
draws that share their test problems (the same ``base.seed``, from each experiment's seed label)
are pooled as draws x problems.

    python scripts/repool_compare.py compare/compare.json --base-set G --fractions 0.25 0.5 0.75 1.0
    python scripts/repool_compare.py compare/compare.json --claims compare/seed-0-claims.json \\
        compare/data-seed-1/claims.json compare/data-seed-2/claims.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cotshape.core.artifacts import mix_set_name
from cotshape.core.errors import InputError
from cotshape.reporting.compare_markdown import render_markdown, write
from cotshape.reporting.pooling import combine_parts, pool_runs, set_order


def _values(task: dict, s: str, f: str) -> list[float | None]:
    try:
        return list(task["sets"][s][f]["values"])
    except KeyError as e:
        raise InputError(f"compare.json: set {s!r} has no per-seed {f!r} values") from e


def _slope(xs: list[float], ys: list[float]) -> float:
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def per_seed_diffs(task: dict, cid: str, base_set: str, fractions: list[float]) -> dict[str | None, list[float]]:
    """``part -> per-seed differences`` of one claim (part None: a claim without parts)."""
    acc = {s: _values(task, s, "acc") for s in task["sets"] if "acc" in task["sets"][s]}
    if cid in ("C2", "C3", "C4"):
        s = {"C2": "G", "C3": "W", "C4": "P"}[cid]
        return {None: [b - a for a, b in zip(acc["H"], acc[s], strict=True)]}
    if cid == "C5":
        return {None: [b - a for a, b in zip(acc[base_set], acc[mix_set_name(0.25)], strict=True)]}
    if cid == "C6":
        xs = [0.0, *fractions]
        names = [base_set, *(mix_set_name(p) for p in fractions)]
        return {None: [_slope(xs, [acc[n][i] for n in names]) for i in range(len(acc[base_set]))]}
    if cid == "C1":
        loss = {s: _values(task, s, "loss") for s in ("H", "G", "W")}
        return {s: [h - x for h, x in zip(loss["H"], loss[s], strict=True)] for s in ("G", "W")}
    raise InputError(f"compare.json: claim {cid}: no rule to rebuild its per-seed differences")


def _pooled(diffs: list[float], kind: str, margin: float | None, old: dict) -> dict:
    p = pool_runs(diffs, None, kind, margin)  # the per-seed intervals were not kept: no se
    p["n"] = old.get("n")
    fixed = old.get("fixed") or old  # an old comparison's pooled interval was the fixed effect
    if fixed.get("ci95") is not None:
        p["fixed"] = {f: fixed[f] for f in ("diff", "ci95", "k", "n", "verdict")}
    return p


def repool(result: dict, base_set: str, fractions: list[float]) -> dict:
    from cotshape.reporting.pooling import POOLING_NOTE

    for g in result["groups"]:
        for t in g["tasks"].values():  # compare.json is written with sorted keys: back to the table's order
            t["sets"] = dict(sorted(t["sets"].items(), key=lambda kv: set_order(kv[0])))
        for c in g["claims"]:
            parts = per_seed_diffs(g["tasks"][c["task"]], c["id"], base_set, fractions)
            if None in parts:
                c["pooled"] = _pooled(parts[None], c["kind"], c.get("margin"), c["pooled"])
            else:
                c["parts"] = {name: _pooled(d, c["kind"], c.get("margin"), c["parts"][name])
                              for name, d in parts.items()}
                c["pooled"] = {"verdict": combine_parts([p["verdict"] for p in c["parts"].values()]),
                               "k": max(p["k"] for p in c["parts"].values())}
    result["pooling"] = POOLING_NOTE + (
        " Re-pooled by scripts/repool_compare.py from the per-seed numbers the comparison kept: "
        "the per-seed intervals were not kept, so the run-level interval is the t-interval over "
        "the seeds (tau, I² unknown) and the fixed-effect column is the comparison's former pooled "
        "interval.")
    return result


def repool_from_claims(result: dict, claims_files: list[Path]) -> dict:
    """The comparison with its claims pooled again from each experiment's claims.json."""
    from cotshape.reporting.compare import SEED_PARAM, Experiment
    from cotshape.reporting.pooling import POOLING_NOTE, claims_table

    if len(result["groups"]) != 1:
        raise InputError(f"--claims re-pools one group; the comparison has {len(result['groups'])}")
    g = result["groups"][0]
    if len(claims_files) != len(g["experiments"]):
        raise InputError(f"--claims: {len(claims_files)} files for {len(g['experiments'])} experiments "
                         f"({', '.join(e['name'] for e in g['experiments'])}), one each in that order")
    members = []
    for e, path in zip(g["experiments"], claims_files, strict=True):
        try:
            claims = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise InputError(f"{path}: {err}") from err
        base_seed = str(e["seed"]).split()[0]  # "0 (data 1)": base.seed 0, data seed 1
        members.append(Experiment(name=e["name"], rev=e["rev"], kind=e["kind"], summary={},
                                  params={SEED_PARAM: base_seed}, claims=claims))
    g["claims"] = claims_table(members)
    for t in g["tasks"].values():
        t["sets"] = dict(sorted(t["sets"].items(), key=lambda kv: set_order(kv[0])))
    result["pooling"] = POOLING_NOTE + (
        " Re-pooled by scripts/repool_compare.py --claims from each experiment's metrics/claims.json.")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("compare_json", type=Path)
    ap.add_argument("--base-set", default="G", help="degrade.base_set of the compared runs")
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0],
                    help="degrade.flawed_fractions of the compared runs")
    ap.add_argument("--claims", type=Path, nargs="+",
                    help="one metrics/claims.json per experiment of the group, in its order: pool from them")
    args = ap.parse_args(argv)
    try:
        result = json.loads(args.compare_json.read_text(encoding="utf-8"))
        result = (repool_from_claims(result, args.claims) if args.claims
                  else repool(result, args.base_set, args.fractions))
    except (InputError, json.JSONDecodeError, KeyError) as e:
        print(f"error: {args.compare_json}: {e}", file=sys.stderr)
        return 2
    md, js = write(result, args.compare_json.parent)
    print(f"wrote {md} and {js}")
    print(render_markdown(result).split("### Claims", 1)[1].split("## Across", 1)[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
