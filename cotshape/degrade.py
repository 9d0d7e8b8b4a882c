"""Degraded training sets: flawed mixtures and step-level corruption.

Two kinds, both seeded (every random choice comes from a generator keyed by the seed and the
problem id, so adding a problem or a fraction never changes the others):

**(a) Mixtures.** For each fraction ``p`` a set of the same size as G in which a fraction ``p``
of the CoTs is replaced by a *completely flawed* CoT for the same problem. The problems to
replace are the first ``round(p * n)`` of one seeded permutation, so mixtures are nested (the
flawed problems at 25 % are among those at 50 %) and the curve varies only the fraction.
A flawed CoT comes from

* ``corrupt`` — :func:`corrupt_cot` on the problem's own correct CoT with *every* step perturbed
  (numbers changed, steps shuffled), checked wrong with the task verifier; or
* ``model`` — the teacher prompted to reason wrongly (``Task.flawed_messages``), checked wrong.

If no flawed CoT that verifies wrong can be produced for a problem, its correct CoT is kept and
counted in ``flawed_unavailable`` (the metrics say so; the set keeps its size).

Example (programmatic corruption of every step)::

    >>> import random
    >>> corrupt_cot("Tom has 3 apples.\\nHe buys 4 more.\\n3 + 4 = 7\\nThe answer is 7.", random.Random(0))
    'He buys 6 more.\\nThe answer is 6.\\nTom has 2 apples.\\n4 + 2 = 5'

**(b) Step-level.** A correct CoT with ``k`` of its steps corrupted (:func:`degrade_steps`): each
chosen step has its numbers perturbed; a step without numbers is dropped or swapped with its
neighbour. The final answer line is never among the chosen steps, so the set isolates flawed
*reasoning* from a flawed *answer*.

    >>> degrade_steps("Tom has 3 apples.\\nHe buys 4 more.\\n3 + 4 = 7\\nThe answer is 7.", 1, random.Random(1))
    'Tom has 4 apples.\\nHe buys 4 more.\\n3 + 4 = 7\\nThe answer is 7.'
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from typing import Any

NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w])")


def perturb_number(text: str, rng: random.Random) -> str:
    """Change one number to a nearby different one of the same form (integer or decimal)."""
    if "." in text:
        value = float(text)
        decimals = len(text.split(".")[1])
        delta = rng.choice([-1, 1]) * rng.randint(1, 9) / (10**decimals)
        new = max(0.0, value + delta)
        out = f"{new:.{decimals}f}"
        return out if out != text else f"{value + 1:.{decimals}f}"
    value = int(text)
    span = max(1, abs(value) // 2)
    delta = rng.randint(1, span) * (1 if value == 0 or rng.random() < 0.5 else -1)
    new = value + delta
    if new < 0:  # keep magnitudes plausible and avoid introducing a sign
        new = value + abs(delta)
    return str(new)


def perturb_numbers(step: str, rng: random.Random) -> tuple[str, int]:
    """Perturb every number of a step; returns (new step, numbers changed)."""
    count = 0

    def repl(m: re.Match) -> str:
        nonlocal count
        count += 1
        return perturb_number(m.group(1), rng)

    return NUMBER.sub(repl, step), count


def split_steps(cot: str) -> list[str]:
    """Steps of a CoT: its non-empty lines, or its sentences for a one-line CoT."""
    lines = [ln for ln in cot.split("\n") if ln.strip()]
    if len(lines) > 1:
        return lines
    return [s for s in re.split(r"(?<=[.!?])\s+", cot.strip()) if s]


def corrupt_cot(cot: str, rng: random.Random) -> str:
    """Completely flawed version of a CoT: every number of every step perturbed, then the
    steps shuffled (if there are several) so the order of reasoning is broken too."""
    steps = [perturb_numbers(s, rng)[0] for s in split_steps(cot)]
    if len(steps) > 1:
        order = list(range(len(steps)))
        while order == sorted(order):
            rng.shuffle(order)
        steps = [steps[i] for i in order]
    return "\n".join(steps)


def degrade_steps(cot: str, k: int, rng: random.Random) -> str:
    """Corrupt ``k`` of the CoT's steps (never its last step, which states the answer)."""
    steps = split_steps(cot)
    if len(steps) < 2:
        return perturb_numbers(cot, rng)[0] if k > 0 else cot
    body = list(range(len(steps) - 1))
    chosen = sorted(rng.sample(body, min(k, len(body))))
    dropped: set[int] = set()
    for i in chosen:
        new, changed = perturb_numbers(steps[i], rng)
        if changed:
            steps[i] = new
        elif i + 1 < len(steps) - 1 and rng.random() < 0.5:
            steps[i], steps[i + 1] = steps[i + 1], steps[i]
        else:
            dropped.add(i)
    return "\n".join(s for i, s in enumerate(steps) if i not in dropped)


def nested_order(problem_ids: list[str], seed: int) -> list[str]:
    """One seeded permutation of the problems; mixture p flaws the first round(p*n)."""
    order = sorted(problem_ids)
    random.Random(f"{seed}\x00mixture-order").shuffle(order)
    return order


def flawed_from_corruption(
    records: list[dict[str, Any]],
    is_wrong: Callable[[str, str], bool],
    seed: int,
    attempts: int = 5,
) -> dict[str, str]:
    """For each correct CoT record, a corrupted CoT that ``is_wrong(problem_id, text)``.

    Problems where ``attempts`` corruptions all still verify correct get no entry.
    """
    out: dict[str, str] = {}
    for rec in records:
        rng = random.Random(f"{seed}\x00{rec['problem_id']}\x00corrupt")
        for _ in range(attempts):
            cand = corrupt_cot(rec["completion"], rng)
            if cand != rec["completion"] and is_wrong(rec["problem_id"], cand):
                out[rec["problem_id"]] = cand
                break
    return out


def model_flawed_seed(seed: int, problem_id: str) -> int:
    """Sampling seed of the model-written flawed CoTs of one problem (not of its position)."""
    from cotshape.generation.base import derive_seed

    return derive_seed(seed, problem_id, "flawed")


def flawed_from_model(
    records: list[dict[str, Any]],
    generate: Callable[[list[str], list[int]], list[list[str]]],
    is_wrong: Callable[[str, str], bool],
    seed: int,
) -> dict[str, str]:
    """For each correct CoT record, the first of the model's candidates that ``is_wrong``.

    ``generate(problem_ids, seeds)`` returns candidate texts per problem (the stage prompts the
    teacher with ``Task.flawed_messages`` and seed :func:`model_flawed_seed`); ``is_wrong`` must
    demand a parsed but wrong final answer (an unparsed ramble is not a flawed *CoT*).
    Problems without such a candidate get no entry.
    """
    ids = [r["problem_id"] for r in records]
    out: dict[str, str] = {}
    if not ids:
        return out
    for pid, cands in zip(ids, generate(ids, [model_flawed_seed(seed, pid) for pid in ids]), strict=True):
        for text in cands:
            if is_wrong(pid, text):
                out[pid] = text
                break
    return out


def make_mixtures(
    good: list[dict[str, Any]],
    flawed: dict[str, str],
    fractions: list[float],
    seed: int,
) -> tuple[dict[float, list[dict[str, Any]]], dict[str, Any]]:
    """Mixtures of the correct records ``good`` with ``flawed`` CoTs (by problem id).

    Returns ``({p: records}, metrics)``. Each mixture has ``len(good)`` records in the order of
    ``good``; a replaced record gets ``flawed: True`` and the flawed text as completion.
    """
    ids = [r["problem_id"] for r in good]
    order = nested_order(ids, seed)
    mixtures: dict[float, list[dict[str, Any]]] = {}
    metrics: dict[str, Any] = {"size": len(good), "flawed_available": len(flawed), "fractions": {}}
    for p in fractions:
        want = math.floor(p * len(good) + 0.5)  # round half up (round() would round 2.5 to 2)
        target = set(order[:want])
        recs, n_flawed, missing = [], 0, 0
        for r in good:
            rec = dict(r, flawed=False)
            if r["problem_id"] in target:
                if r["problem_id"] in flawed:
                    rec["completion"] = flawed[r["problem_id"]]
                    rec["flawed"] = True
                    n_flawed += 1
                else:
                    missing += 1
            recs.append(rec)
        mixtures[p] = recs
        metrics["fractions"][str(float(p))] = {
            "requested_flawed": want,
            "flawed": n_flawed,
            "flawed_unavailable": missing,
            "actual_fraction": n_flawed / len(good) if good else 0.0,
        }
    return mixtures, metrics


def make_step_degraded(good: list[dict[str, Any]], k: int, seed: int) -> list[dict[str, Any]]:
    """The step-degraded set: every correct CoT with ``k`` steps corrupted."""
    out = []
    for r in good:
        rng = random.Random(f"{seed}\x00{r['problem_id']}\x00steps")
        out.append(dict(r, completion=degrade_steps(r["completion"], k, rng), degraded_steps=k))
    return out
