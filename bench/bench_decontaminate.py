"""Benchmark: decontamination of 10,000 train x 5,000 test word problems, naive loop vs :func:`decontaminate`.

Builds synthetic word problems (a setup, an event and a question sentence from templates with
varied wording, names, items, places and numbers from ``random.Random(seed)``): the test set, and a training set with
planted copies of test problems: exact copies, copies with one number changed (near-duplicates)
and rewordings that keep the first two sentences (8+ words) under a new opening and question. Then times, in the same run:

* naive - ``rapidfuzz.fuzz.ratio`` on every (train, test) pair in a Python double loop, the
  stock way to find near-duplicates; timed on the first ``--naive-train`` training problems
  against all test problems and EXTRAPOLATED to the whole training set;
* ``fuzzy_matches`` - the fuzzy method alone (a numpy character-count bound, then ``fuzz.ratio``
  on the pairs it leaves; the same pairs as the loop);
* ``decontaminate`` - all three methods (exact, 8-gram index, fuzzy), normalisation included.

It prints the times, the speed-up, the CPU, the flagged counts per method next to the planted
counts, and whether the naive loop and ``fuzzy_matches`` agree on the timed subsample.

    .venv/bin/python bench/bench_decontaminate.py [--train 10000 --test 5000 --naive-train 200]
"""

from __future__ import annotations

import argparse
import os
import random
import re
import time

NAMES = ("Ava Ben Chloe Dmitri Elena Farah Gus Hana Ivan Jada Kofi Lena Mateo Nia Omar Priya Quinn Rosa Sami "
         "Tariq Uma Vik Wen Xena Yusuf Zoe Aiden Bea Carlos Dana Emeka Fiona Goro Hugo Isla Jonas Kira Luis "
         "Maya Noor").split()
ITEMS = ("apples pencils marbles stickers cookies books stamps shells coins cards balloons candles crayons "
         "buttons ribbons plums lemons bottles cups plates beads kites socks hats scarves gloves tickets "
         "seeds bricks nails boxes bags jars rocks leaves feathers photos toys puzzles dice").split()
PLACES = ("market fair library bakery garden harbor school museum park station farm shop mall studio zoo "
          "gym beach cafe theater workshop").split()
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
# a problem is one sentence of each kind, [a|b] a random choice of wording: unrelated problems
# rarely share an 8-gram, as in real data sets (fixed wording would make most of them overlap)
SETUPS = (
    "{n1} [has|owns|keeps|collected] {a} {i1} [from|at|near|bought at] the {p1}.",
    "[At|Inside|Near] the {p1}, {n1} [packs|loads|fills|stacks] {a} [boxes|crates|bins|cases] with {b} {i1} "
    "[in each|per|inside every] [box|container|one].",
    "{n1} [earns|makes|gets|is paid] {a} dollars [at|working at|from] the {p1} and [spends|uses|pays] {b} [on|for] {i1}.",
    "A [crate|box|basket|sack] [at|in|from] the {p1} [holds|contains|fits] {a} {i1}, and {n1} [fills|packs|loads] "
    "{b} [crates|of them|such containers].",
    "[At|Inside|Near] the {p1}, there are {a} {i1} in a [jar|tin|bowl|drawer].",
    "{n1} [sells|offers|trades] {i1} [at|outside|near] the {p1} for {a} [dollars|cents|coins] [each|apiece|per item].",
    "{n1} [walks|runs|cycles|drives] {a} [meters|yards|miles] to the {p1} with {b} {i1} in a [bag|basket|backpack].",
    "The {p1} [orders|receives|buys] {a} [packs|crates|boxes] of {i1}, [each with|each holding|with] {b} "
    "[pieces|items|units].",
)
EVENTS = (
    "On {day}, {n2} [buys|gets|finds|brings] {c} more and [gives|hands|passes] {n1} {d}.",
    "{n2} [takes|removes|borrows] {c} [away|of them] on {day} and [brings back|returns|puts back] {d}.",
    "Then {n2} [adds|puts in|contributes] {c} [of them|more] on {day}, and [loses|breaks|misplaces] {d}.",
    "By {day}, {n2} has [eaten|used|given away] {c} and {n1} has [kept|saved|set aside] {d}.",
    "{n2} [doubles|triples|counts] the {c} [left over|remaining|still there] on {day}, then [loses|drops|sells] {d}.",
    "On {day} {n1} [trades|swaps|exchanges] {c} [stamps|coins|marbles] with {n2} for {d}.",
)
QUESTIONS = (
    "How many {i1} does {n1} [have|own|hold] after {e} [days|weeks]?",
    "What is the [total|new total|count] if {e} more {i1} [arrive|are added|come in]?",
    "How much [money|cash] is [that|this] worth at {e} cents [each|apiece|a piece]?",
    "What is [left|remaining|still there] once {n2} [takes|removes|uses] {e} more?",
    "[Shared|Split|Divided] among {e} friends, how many does each [get|receive|have]?",
)
REWORD_PREFIX = ("Here is a puzzle from last year's contest.", "Read carefully before you answer.",
                 "A teacher wrote this on the board.")
REWORD_QUESTION = ("Explain each step and give the final count.", "Give the answer as a whole number with units.",
                   "Show your work and check the result twice.")
_CHOICE = re.compile(r"\[([^\]]*)\]")


def problem(rng: random.Random) -> str:
    n1, n2 = rng.sample(NAMES, 2)
    slots = {"n1": n1, "n2": n2, "i1": rng.choice(ITEMS), "p1": rng.choice(PLACES), "day": rng.choice(DAYS),
             **{k: rng.randint(2, 9999) for k in "abcde"}}
    text = " ".join(rng.choice(kind).format(**slots) for kind in (SETUPS, EVENTS, QUESTIONS))
    return " ".join(_CHOICE.sub(lambda m: rng.choice(m.group(1).split("|")), text).split())


def change_one_number(q: str, rng: random.Random) -> str:
    nums = list(re.finditer(r"\d+", q))
    m = rng.choice(nums)
    new = str(int(m.group()) + rng.randint(1, 9))
    return q[: m.start()] + new + q[m.end():]


def reword(q: str, rng: random.Random) -> str:
    """Keep the first two sentences (8+ words), replace the question, add an opening sentence."""
    kept = q.rsplit("?", 1)[0].rsplit(". ", 1)[0]
    return f"{rng.choice(REWORD_PREFIX)} {kept}. {rng.choice(REWORD_QUESTION)}"


def build(n_train: int, n_test: int, planted: int, seed: int = 0) -> tuple[list[dict], list[dict], dict]:
    rng = random.Random(seed)
    test = [{"id": f"test-{j}", "question": problem(rng)} for j in range(n_test)]
    train: list[dict] = []
    kinds: dict[str, list[str]] = {"exact": [], "number": [], "reworded": []}
    for kind in kinds:
        for j in rng.sample(range(n_test), planted):
            q = test[j]["question"]
            q = q if kind == "exact" else change_one_number(q, rng) if kind == "number" else reword(q, rng)
            kinds[kind].append(f"train-{len(train)}")
            train.append({"id": f"train-{len(train)}", "question": q})
    while len(train) < n_train:
        train.append({"id": f"train-{len(train)}", "question": problem(rng)})
    order = list(range(len(train)))
    rng.shuffle(order)
    return [train[k] for k in order], test, kinds


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=10_000)
    ap.add_argument("--test", type=int, default=5_000)
    ap.add_argument("--planted", type=int, default=200, help="planted copies of each kind")
    ap.add_argument("--naive-train", type=int, default=200, help="training problems timed for the naive loop")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from rapidfuzz import fuzz

    from cotshape.data.decontaminate import decontaminate, fuzzy_matches, normalize

    train, test, kinds = build(args.train, args.test, args.planted, args.seed)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{len(train)} train x {len(test)} test problems; planted per kind: {args.planted} exact, "
          f"{args.planted} one number changed, {args.planted} reworded (shared 8-gram)")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {load:.2f} at start")

    tr = [" ".join(normalize(r["question"])) for r in train]
    te = [" ".join(normalize(r["question"])) for r in test]
    sub = tr[: args.naive_train]
    t = time.perf_counter()
    naive_pairs = {(i, j) for i, a in enumerate(sub) for j, b in enumerate(te) if fuzz.ratio(a, b) >= 95}
    t_sub = time.perf_counter() - t
    t_naive = t_sub * len(tr) / len(sub)
    print(f"naive fuzz.ratio loop: {len(sub)} x {len(te)} = {len(sub) * len(te):,} pairs in {t_sub:.2f} s "
          f"-> EXTRAPOLATED to {len(tr)} x {len(te)}: {t_naive:.1f} s")

    t = time.perf_counter()
    fz = fuzzy_matches(tr, te, 95)
    t_fuzzy = time.perf_counter() - t
    print(f"fuzzy_matches (character-count filter, then fuzz.ratio / cdist): {t_fuzzy:.2f} s")

    t = time.perf_counter()
    out = decontaminate(train, test)
    t_all = time.perf_counter() - t
    print(f"decontaminate (exact + 8-gram + fuzzy, normalisation included): {t_all:.2f} s")
    print(f"speed-up vs extrapolated naive loop: fuzzy {t_naive / t_fuzzy:.0f}x, whole decontaminate "
          f"{t_naive / t_all:.0f}x")
    same = {p for p in fz if p[0] < len(sub)} == naive_pairs
    print(f"naive and fuzzy_matches agree on the {len(sub)} timed train problems: {same} "
          f"({len(naive_pairs)} pairs >= 95)")

    flagged = {m: {p[0] for p in out["pairs"] if p[2] == m} for m in ("exact", "ngram", "fuzzy")}
    print(f"flagged: {out['flagged']} of {len(train)} by any method; by method {out['by_method']}")
    for kind, ids in kinds.items():
        found = {m: sum(i in flagged[m] for i in ids) for m in flagged}
        print(f"  planted {kind:<8} {len(ids)}: found by exact {found['exact']}, ngram {found['ngram']}, "
              f"fuzzy {found['fuzzy']}")
    planted = set().union(*kinds.values())
    extra = {m: len(flagged[m] - planted) for m in flagged}
    print(f"  flagged but not planted (chance overlaps of templated problems): {extra}")


if __name__ == "__main__":
    main()
