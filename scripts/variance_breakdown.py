"""The variance of the default's numbers by source: data draw, SFT seed, test problems (issue #23).

Two measurements of the same configuration are combined by the method of moments
(cotshape.core.random_effects.variance_components, extended to a second stage):

* ``--claims`` (``metrics/claims.json`` of a run with ``sft.runs: R``): R training runs on one data
  draw, scored on the same test problems: their spread is the SFT seed's part; each run's own
  interval gives the test problems' part (``claims.json`` -> ``variance``).
* ``--compare`` (``compare/compare.json`` of whole-pipeline seeds, one training run each, each seed
  with its own test problems): the spread between seeds is the data draw plus the SFT seed plus
  the test problems.

The data draw's part is the spread between seeds minus the other two (truncated at 0). Both must come from the same
params except the seeds and ``sft.runs``; the script says which commits they are from. Writes a
Markdown table (``--out``) and prints it.

    python scripts/variance_breakdown.py --claims metrics/claims.json --compare compare/seeds-0-1-2-one-run/compare.json \\
        --out compare/seeds-0-1-2-one-run/variance.md

(``cotshape compare`` over ``-S base.data_seed=N`` experiments, each with several runs, gives the
same breakdown directly: ``compare/compare.md``.)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

CLAIMS = ("C2", "C3", "C4", "C5")


def _row(name: str, total: float | None, vc: dict) -> list[str]:
    """sd in points (share of the variance) of each source."""
    binom, sft = vc["parts"]["binomial"]["var"], vc["parts"]["sft"]["var"]
    # between whole-pipeline seeds (one run each, each its own test problems: prepare follows
    # base.seed) the spread is data + SFT + test problems; the runs of one draw give SFT alone
    # (they share their test problems) and each run's se the test problems' part
    data = None if total is None else max(0.0, total - sft - binom)
    parts = {"data draw": data, "SFT seed": sft, "test problems": binom}
    whole = sum(v for v in parts.values() if v is not None)

    def cell(v: float | None) -> str:
        return "—" if v is None else f"{100 * math.sqrt(v):.1f} ({100 * v / whole:.0f} %)"

    total_cell = "—" if total is None else f"{100 * math.sqrt(total):.1f}"
    return [name, f"{100 * math.sqrt(vc['within']):.1f}", total_cell, *(cell(v) for v in parts.values())]


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=Path, required=True, help="metrics/claims.json of a run with sft.runs >= 2")
    ap.add_argument("--compare", type=Path, required=True, help="compare.json of whole-pipeline seeds")
    ap.add_argument("--task", default="gsm8k")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    claims = json.loads(args.claims.read_text(encoding="utf-8"))
    var = claims["variance"][args.task]
    group = json.loads(args.compare.read_text(encoding="utf-8"))["groups"][0]
    seeds = [e["seed"] for e in group["experiments"]]
    between = {c["id"]: c["pooled"].get("per_seed") for c in group["claims"] if c["task"] == args.task}
    set_accs = {s: [v for v in (a.get("acc") or {}).get("values", []) if v is not None]
                for s, a in group["tasks"][args.task]["sets"].items()}
    rows = []
    for cid in CLAIMS:
        vc = var["claims"].get(cid)
        if vc is None:
            continue
        per_seed = between.get(cid) or []
        total = statistics.variance(per_seed) if len(per_seed) >= 2 else None
        rows.append(_row(f"{cid} ({vc['contrast']})", total, vc))
    for s, vc in var["sets"].items():
        accs = set_accs.get(s, [])
        rows.append(_row(f"accuracy of {s}", statistics.variance(accs) if len(accs) >= 2 else None, vc))
    runs = next(iter(var["claims"].values()))["runs"][0] if var["claims"] else None
    header = ["number", f"sd over {runs} SFT runs, one draw (pts)", f"sd over {len(seeds)} pipeline seeds (pts)",
              "data draw: sd (share)", "SFT seed: sd (share)", "test problems: sd (share)"]
    lines = [
        "# Where the variance of the default's numbers comes from",
        "",
        f"Within one draw: {args.claims} ({runs} training runs per set on data seed 0). Between draws: "
        f"{args.compare} (whole-pipeline seeds {', '.join(map(str, seeds))}, one training run each, their "
        "own teacher samples, G/W draw, SFT and test problems). Method of moments, each part truncated at 0: "
        "test problems = the mean squared se of a run (Wilson / Newcombe); SFT seed = the spread of the runs on "
        "one draw (they share the test problems); data draw = the spread between seeds minus both. Generated "
        "by scripts/variance_breakdown.py.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    text = "\n".join(lines)
    if args.out:
        args.out.write_text(text, encoding="utf-8")
    print(text)
    return text


if __name__ == "__main__":
    main()
