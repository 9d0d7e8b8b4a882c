"""An offline, seeded generator of easy GSM8K-style word problems (one or two arithmetic steps).

The offline default runs on 2 CPU cores with SmolLM2-135M-Instruct as the teacher, which solves
almost no real GSM8K problem (0 of 64 samples of reasoning-gym's ``gsm_symbolic``). To make the
default an experiment in which correct (G) and wrong (W) teacher chains of thought both exist,
``prepare.level: easy`` swaps in these problems: one or two steps of +, - and x over small
whole numbers, phrased like grade-school word problems. They are a CPU *proxy* for GSM8K, not
GSM8K; the hub source (``openai/gsm8k``) is unchanged.

The human solution is written the way GSM8K's annotators write: one terse line per step with the
equation inline, then ``#### N`` (:func:`cotshape.tasks.gsm8k.human_solution` turns that into
``The answer is N.``). It is deliberately *not* the teacher's chatty style, so that H differs from
the teacher's CoTs in form as it does in the paper.

``generate(index, seed)`` is a pure function of its arguments (only :class:`random.Random` with an
integer seed), so the same (index, seed) gives the same problem everywhere.
"""

from __future__ import annotations

import random
from collections.abc import Callable

WordProblem = dict[str, object]  # question, solution, answer (int), steps (int), family

NAMES = ("Mia", "Tom", "Ava", "Leo", "Zoe", "Sam", "Ivy", "Max", "Lily", "Ben", "Nora", "Eli", "Ruby", "Owen",
         "Emma", "Jack", "Lucy", "Noah", "Ella", "Finn")
PRONOUNS = {"Mia": "She", "Ava": "She", "Zoe": "She", "Ivy": "She", "Lily": "She", "Nora": "She", "Ruby": "She",
            "Emma": "She", "Lucy": "She", "Ella": "She"}
ITEMS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "shells", "cards", "stamps", "balloons",
         "crayons", "eggs", "toy cars", "buttons", "flowers")
CONTAINERS = ("bags", "boxes", "packs", "jars", "baskets")


def _who(rng: random.Random) -> tuple[str, str]:
    name = rng.choice(NAMES)
    return name, PRONOUNS.get(name, "He")


def _add(rng: random.Random) -> WordProblem:
    (n, he), item = _who(rng), rng.choice(ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 6)
    return {"question": f"{n} has {a} {item}. {he} gets {b} more {item}. How many {item} does {n} have now?",
            "solution": f"{n} has {a} + {b} = {a + b} {item} now.\n#### {a + b}", "answer": a + b, "steps": 1}


def _sub(rng: random.Random) -> WordProblem:
    (n, he), item = _who(rng), rng.choice(ITEMS)
    b = rng.randint(2, 6)
    a = b + rng.randint(2, 6)
    return {"question": f"{n} has {a} {item}. {he} gives {b} {item} to a friend. How many {item} does {n} have left?",
            "solution": f"{n} has {a} - {b} = {a - b} {item} left.\n#### {a - b}", "answer": a - b, "steps": 1}


def _mul(rng: random.Random) -> WordProblem:
    (n, _), item, box = _who(rng), rng.choice(ITEMS), rng.choice(CONTAINERS)
    a, b = rng.randint(2, 5), rng.randint(2, 5)
    return {"question": f"{n} buys {a} {box} of {item}. Each of the {box} has {b} {item}. "
                        f"How many {item} does {n} buy?",
            "solution": f"{n} buys {a} * {b} = {a * b} {item}.\n#### {a * b}", "answer": a * b, "steps": 1}


def _add_sub(rng: random.Random) -> WordProblem:
    (n, he), item = _who(rng), rng.choice(ITEMS)
    a, b = rng.randint(2, 9), rng.randint(2, 6)
    c = rng.randint(1, min(a + b - 1, 6))
    t = a + b
    return {"question": f"{n} has {a} {item}. {he} gets {b} more {item} and then gives {c} {item} away. "
                        f"How many {item} does {n} have now?",
            "solution": f"After getting more, {n} has {a} + {b} = {t} {item}.\n"
                        f"After giving some away, {n} has {t} - {c} = {t - c} {item}.\n#### {t - c}",
            "answer": t - c, "steps": 2}


def _mul_add(rng: random.Random) -> WordProblem:
    (n, he), item, box = _who(rng), rng.choice(ITEMS), rng.choice(CONTAINERS)
    a, b, c = rng.randint(2, 4), rng.randint(2, 5), rng.randint(2, 9)
    t = a * b
    return {"question": f"{n} has {a} {box} with {b} {item} in each. {he} also has {c} loose {item}. "
                        f"How many {item} does {n} have in all?",
            "solution": f"The {box} hold {a} * {b} = {t} {item}.\n"
                        f"In all {n} has {t} + {c} = {t + c} {item}.\n#### {t + c}",
            "answer": t + c, "steps": 2}


def _mul_sub(rng: random.Random) -> WordProblem:
    (n, he), item, box = _who(rng), rng.choice(ITEMS), rng.choice(CONTAINERS)
    a, b = rng.randint(2, 4), rng.randint(2, 5)
    t = a * b
    c = rng.randint(1, min(t - 1, 6))
    return {"question": f"{n} buys {a} {box} of {item} with {b} {item} in each. {he} uses {c} of them. "
                        f"How many {item} are left?",
            "solution": f"{n} buys {a} * {b} = {t} {item}.\n{t} - {c} = {t - c} {item} are left.\n#### {t - c}",
            "answer": t - c, "steps": 2}


FAMILIES: dict[str, Callable[[random.Random], WordProblem]] = {
    "add": _add, "sub": _sub, "mul": _mul, "add_sub": _add_sub, "mul_add": _mul_add, "mul_sub": _mul_sub,
}


def generate(index: int, seed: int) -> WordProblem:
    """Problem ``index`` of the stream ``seed``: a family drawn uniformly, then its numbers."""
    rng = random.Random(f"wordgen:{seed}:{index}")
    family = rng.choice(sorted(FAMILIES))
    problem = FAMILIES[family](rng)
    problem["family"] = family
    return problem
