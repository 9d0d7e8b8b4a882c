"""An offline, seeded generator of MATH-style problems with worked LaTeX solutions.

Hendrycks MATH cannot be downloaded here, and reasoning-gym has no MATH-like generator with
worked solutions, so this module writes its own: several problem families (linear equations,
fraction arithmetic, quadratic roots, gcd/lcm, probability, polynomial evaluation, arithmetic
sequences, systems of equations, percentages, powers). Each solution is a short worked derivation
in MATH's style (LaTeX in ``$...$``) that ends with the answer in ``\\boxed{...}``, so gold answers
are read exactly like those of the hub data (last ``\\boxed{}`` of the solution).

``generate(index, seed)`` is a pure function of its arguments: the same (index, seed) always
gives the same problem, on every machine and Python version (only :class:`random.Random` with
an integer seed and exact integer/Fraction arithmetic are used).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from fractions import Fraction

MathProblem = dict[str, str]  # keys: question, solution, answer, family


def latex_frac(v: Fraction) -> str:
    """``Fraction(-3, 4)`` -> ``-\\frac{3}{4}``; integers stay integers."""
    if v.denominator == 1:
        return str(v.numerator)
    sign = "-" if v < 0 else ""
    return f"{sign}\\frac{{{abs(v.numerator)}}}{{{v.denominator}}}"


def _signed(c: int, term: str = "", first: bool = False) -> str:
    """A polynomial term with its sign: ``_signed(-3, 'x')`` -> ``- 3x``."""
    if c == 0:
        return ""
    coef = "" if abs(c) == 1 and term else str(abs(c))
    if first:
        return f"{'-' if c < 0 else ''}{coef}{term}"
    return f" {'-' if c < 0 else '+'} {coef}{term}"


def _poly(coefs: list[int], var: str = "x") -> str:
    """LaTeX of a polynomial from highest to lowest degree."""
    deg = len(coefs) - 1
    out = ""
    for i, c in enumerate(coefs):
        p = deg - i
        term = f"{var}^{p}" if p > 1 else (var if p == 1 else "")
        out += _signed(c, term, first=not out)
    return out or "0"


def _linear(r: random.Random) -> MathProblem:
    x = r.randint(-12, 12)
    a, c = r.sample([k for k in range(-9, 10) if k != 0], 2)
    b = r.randint(-20, 20)
    d = (a - c) * x + b
    lhs, rhs = _poly([a, b]), _poly([c, d])
    return {
        "question": f"Solve for $x$: ${lhs} = {rhs}$.",
        "solution": (
            f"Subtracting ${_poly([c, 0])}$ from both sides gives ${_poly([a - c, b])} = {d}$. "
            f"Then subtracting ${b}$ from both sides gives ${_poly([a - c, 0])} = {d - b}$, "
            f"so $x = \\frac{{{d - b}}}{{{a - c}}} = \\boxed{{{x}}}$."
        ),
        "answer": str(x),
    }


def _fractions(r: random.Random) -> MathProblem:
    p, q = Fraction(r.randint(1, 9), r.randint(2, 12)), Fraction(r.randint(1, 9), r.randint(2, 12))
    op = r.choice(["+", "-", "\\cdot", "\\div"])
    value = {"+": p + q, "-": p - q, "\\cdot": p * q, "\\div": p / q}[op]
    a, b = latex_frac(p), latex_frac(q)
    if op in "+-":
        den = p.denominator * q.denominator // math.gcd(p.denominator, q.denominator)
        pn, qn = p.numerator * den // p.denominator, q.numerator * den // q.denominator
        step = (
            f"The least common denominator is ${den}$, so ${a} {op} {b} = "
            f"\\frac{{{pn}}}{{{den}}} {op} \\frac{{{qn}}}{{{den}}} = \\frac{{{pn + qn if op == '+' else pn - qn}}}{{{den}}}$."
        )
    elif op == "\\cdot":
        step = (
            f"Multiplying numerators and denominators, ${a} \\cdot {b} = "
            f"\\frac{{{p.numerator * q.numerator}}}{{{p.denominator * q.denominator}}}$."
        )
    else:
        step = (
            f"Dividing by ${b}$ is multiplying by its reciprocal: ${a} \\div {b} = {a} \\cdot "
            f"{latex_frac(1 / q)} = \\frac{{{p.numerator * q.denominator}}}{{{p.denominator * q.numerator}}}$."
        )
    return {
        "question": f"Compute ${a} {op} {b}$. Express your answer as a common fraction in lowest terms.",
        "solution": f"{step} In lowest terms this is $\\boxed{{{latex_frac(value)}}}$.",
        "answer": latex_frac(value),
    }


def _quadratic(r: random.Random) -> MathProblem:
    r1, r2 = r.sample(range(-9, 10), 2)
    b, c = -(r1 + r2), r1 * r2
    lo, hi = sorted((r1, r2))
    answer = f"{lo}, {hi}"
    return {
        "question": f"Find all solutions to ${_poly([1, b, c])} = 0$. Enter all the solutions, separated by commas.",
        "solution": (
            f"We look for two numbers whose product is ${c}$ and whose sum is ${-b}$: they are ${lo}$ and ${hi}$. "
            f"So the equation factors as $(x {'-' if lo >= 0 else '+'} {abs(lo)})(x {'-' if hi >= 0 else '+'} {abs(hi)}) = 0$, "
            f"and the solutions are $\\boxed{{{answer}}}$."
        ),
        "answer": answer,
    }


def _factor_str(n: int) -> str:
    parts, m, p = [], n, 2
    while p * p <= m:
        k = 0
        while m % p == 0:
            m //= p
            k += 1
        if k:
            parts.append(f"{p}^{k}" if k > 1 else str(p))
        p += 1
    if m > 1:
        parts.append(str(m))
    return " \\cdot ".join(parts) if parts else "1"


def _gcd_lcm(r: random.Random) -> MathProblem:
    g = r.randint(2, 15)
    a, b = g * r.randint(2, 12), g * r.randint(2, 12)
    while a == b:
        b = g * r.randint(2, 12)
    fa, fb = _factor_str(a), _factor_str(b)
    if r.random() < 0.5:
        v = math.gcd(a, b)
        return {
            "question": f"What is the greatest common divisor of ${a}$ and ${b}$?",
            "solution": (
                f"We factor: ${a} = {fa}$ and ${b} = {fb}$. The greatest common divisor takes each "
                f"common prime to its smaller power, so it is ${_factor_str(v)} = \\boxed{{{v}}}$."
            ),
            "answer": str(v),
        }
    v = a * b // math.gcd(a, b)
    return {
        "question": f"What is the least common multiple of ${a}$ and ${b}$?",
        "solution": (
            f"We factor: ${a} = {fa}$ and ${b} = {fb}$. The least common multiple takes each prime "
            f"to its larger power, so it is ${_factor_str(v)} = \\boxed{{{v}}}$."
        ),
        "answer": str(v),
    }


def _probability(r: random.Random) -> MathProblem:
    red, blue = r.randint(2, 9), r.randint(2, 9)
    n = red + blue
    both = Fraction(red * (red - 1), n * (n - 1))
    return {
        "question": (
            f"A bag contains ${red}$ red marbles and ${blue}$ blue marbles. Two marbles are drawn "
            "at random without replacement. What is the probability that both are red? Express "
            "your answer as a common fraction."
        ),
        "solution": (
            f"The probability that the first marble is red is $\\frac{{{red}}}{{{n}}}$. Given that, "
            f"${red - 1}$ of the remaining ${n - 1}$ marbles are red, so the probability that both "
            f"are red is $\\frac{{{red}}}{{{n}}} \\cdot \\frac{{{red - 1}}}{{{n - 1}}} = "
            f"\\boxed{{{latex_frac(both)}}}$."
        ),
        "answer": latex_frac(both),
    }


def _polynomial(r: random.Random) -> MathProblem:
    a, b, c = r.randint(-5, 5) or 1, r.randint(-9, 9), r.randint(-9, 9)
    k = r.randint(-4, 4)
    v = a * k * k + b * k + c
    return {
        "question": f"If $f(x) = {_poly([a, b, c])}$, what is the value of $f({k})$?",
        "solution": (
            f"Substituting $x = {k}$: $f({k}) = {a}({k})^2 + ({b})({k}) + ({c}) = "
            f"{a * k * k} + ({b * k}) + ({c}) = \\boxed{{{v}}}$."
        ),
        "answer": str(v),
    }


def _sequence(r: random.Random) -> MathProblem:
    a1, d, n = r.randint(-10, 20), r.randint(-6, 9) or 2, r.randint(8, 40)
    terms = ", ".join(str(a1 + i * d) for i in range(4))
    v = a1 + (n - 1) * d
    return {
        "question": f"What is the ${n}$th term of the arithmetic sequence ${terms}, \\ldots$?",
        "solution": (
            f"The first term is ${a1}$ and the common difference is ${d}$. The $n$th term is "
            f"$a_1 + (n-1)d$, so the ${n}$th term is ${a1} + {n - 1} \\cdot ({d}) = \\boxed{{{v}}}$."
        ),
        "answer": str(v),
    }


def _system(r: random.Random) -> MathProblem:
    x, y = r.randint(-9, 9), r.randint(-9, 9)
    a, b = r.randint(1, 5), r.randint(1, 5)
    c, d = r.randint(1, 5), -r.randint(1, 5)
    e, f = a * x + b * y, c * x + d * y
    det = a * d - b * c  # never 0: a*d < 0 < b*c
    return {
        "question": (
            f"If ${_poly([a, 0], 'x')}{_signed(b, 'y')} = {e}$ and "
            f"${_poly([c, 0], 'x')}{_signed(d, 'y')} = {f}$, what is $x + y$?"
        ),
        "solution": (
            f"By Cramer's rule, the determinant is $({a})({d}) - ({b})({c}) = {det}$, so "
            f"$x = \\frac{{({e})({d}) - ({b})({f})}}{{{det}}} = {x}$ and "
            f"$y = \\frac{{({a})({f}) - ({e})({c})}}{{{det}}} = {y}$. "
            f"Therefore $x + y = {x} + ({y}) = \\boxed{{{x + y}}}$."
        ),
        "answer": str(x + y),
    }


def _percent(r: random.Random) -> MathProblem:
    p, n = r.choice([5, 10, 12, 15, 20, 25, 30, 40, 45, 60, 75, 80, 125]), r.randint(2, 80) * 4
    v = Fraction(p * n, 100)
    ans = str(v.numerator) if v.denominator == 1 else f"{float(v):g}"
    return {
        "question": f"What is ${p}\\%$ of ${n}$?",
        "solution": (
            f"${p}\\%$ of ${n}$ is $\\frac{{{p}}}{{100}} \\cdot {n} = \\frac{{{p * n}}}{{100}} = \\boxed{{{ans}}}$."
        ),
        "answer": ans,
    }


def _powers(r: random.Random) -> MathProblem:
    base = r.choice([2, 3, 5])
    a, b, c = r.randint(2, 9), r.randint(2, 9), r.randint(1, 8)
    k = a + b - c
    v = Fraction(base) ** k
    return {
        "question": f"Compute $\\frac{{{base}^{{{a}}} \\cdot {base}^{{{b}}}}}{{{base}^{{{c}}}}}$.",
        "solution": (
            f"Using $a^m a^n = a^{{m+n}}$ and $\\frac{{a^m}}{{a^n}} = a^{{m-n}}$, the expression is "
            f"${base}^{{{a} + {b} - {c}}} = {base}^{{{k}}} = \\boxed{{{latex_frac(v)}}}$."
        ),
        "answer": latex_frac(v),
    }


FAMILIES: dict[str, Callable[[random.Random], MathProblem]] = {
    "linear_equation": _linear,
    "fraction_arithmetic": _fractions,
    "quadratic_roots": _quadratic,
    "gcd_lcm": _gcd_lcm,
    "probability": _probability,
    "polynomial_evaluation": _polynomial,
    "arithmetic_sequence": _sequence,
    "linear_system": _system,
    "percent": _percent,
    "powers": _powers,
}


def generate(index: int, seed: int = 0) -> MathProblem:
    """Problem number ``index`` of the stream for ``seed`` (deterministic)."""
    r = random.Random(seed * 1_000_003 + index)
    family = sorted(FAMILIES)[r.randrange(len(FAMILIES))]
    out = FAMILIES[family](r)
    return {**out, "family": family}
