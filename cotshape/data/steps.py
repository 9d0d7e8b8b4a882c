"""Step-level correctness of chains of thought whose steps are checkable arithmetic.

The paper's claim is that a CoT whose final answer is wrong can still hold many valid reasoning
steps. Answer-level grading cannot see that; this module counts the steps that can be checked
mechanically and how many of them are right. Pure standard library, no model, no I/O:
:func:`find_steps` reads one text, :func:`step_stats` aggregates over many.

What counts as a step: an arithmetic expression with at least one binary operator over numbers
(``+ - * / x × ÷ · \\times \\cdot \\div``, parentheses allowed), then ``=``, then a number.

* Numbers may carry a currency sign (``$5``), thousands commas (``1,200``) and decimals
  (``2.5``, ``.5``); anything after the result (``24 apples``, ``12/day``) is ignored.
* A line is cut into runs at anything that is not a number, operator, parenthesis or ``=``
  (words, newlines, ``,``/``.``/``:`` punctuation). The left side is the longest valid
  expression ending at the ``=``, so ``Step 1: 3 + 4 = 7`` and ``- 48 / 2 = 24`` (a bullet)
  give ``3 + 4`` and ``48 / 2``. A leading minus is a sign only when glued to its number (``-3``).
* Chains split into steps: ``3 + 4 = 7 + 5 = 12`` is ``3 + 4 = 7`` and ``7 + 5 = 12``. When the
  middle of a chain is a rewrite of the same value (``(3 + 4) * 2 = 7 * 2 = 14``) the rewrite is
  not a step, only ``7 * 2 = 14`` is; a middle that is neither (``3 * 4 = 8 * 2 = 16``) makes the
  claim ``3 * 4 = 8``, a wrong step.
* GSM8K calculator annotations ``48/2 = <<48/2=24>>24`` are checked once, from the annotation:
  the annotation is blanked out of the prose, which leaves ``48/2 =`` without a result.

Correctness: the expression is evaluated exactly with :class:`fractions.Fraction` by a
whitelisted :mod:`ast` walk (never ``eval``); operator precedence is the usual one, as written.
A result written without decimals must equal the value exactly (``10/3 = 3`` is wrong); a result
written with ``d`` decimals is right when it is the value rounded to ``d`` decimals, a tie
accepted either way (``10/3 = 3.33`` and ``3.3`` are right, ``3.4`` is wrong; ``2.5 * 4 = 10.0``
is right). Division by zero makes a wrong step.

Not steps (skipped, neither right nor wrong): ``x = 5`` / ``answer = 12`` (no operator on the
left); percentages (``20% of 50 = 10``, ``50 * 20% = 10``: ``%`` in prose means "of" or
"increase by" as often as "/100", so a number with ``%`` cuts the run); words used as operators
(``of``, ``times``); implicit multiplication (``2(3 + 4)``); powers (``^``, ``**``); ``≈``;
an expression equal to an expression (``3 * 4 = 2 * 6``); a result on the left (``12 = 3 * 4``);
LaTeX fractions; an equation broken over lines.

Hostile input is bounded: the text is cut at 100,000 characters, a left side longer than 200
characters or a number longer than 40 characters is not checked, the regexes cannot backtrack
beyond one token, only lines holding an ``=`` are tokenized, and the work per ``=`` is linear in
its run. Nothing here raises on model output.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

MAX_TEXT_CHARS = 100_000
MAX_EXPRESSION_CHARS = 200
MAX_NUMBER_CHARS = 40
# Try at most this many left sides per "=": the pre-filters below leave the first one valid in
# practice; the cap keeps the work bounded if they do not.
_MAX_PARSE_TRIES = 3


@dataclass(frozen=True)
class Step:
    """One checkable equation: ``text`` as written, ``lhs`` the expression, ``rhs`` the claimed
    result as written (currency sign and commas kept), ``correct`` whether the claim holds."""

    text: str
    lhs: str
    rhs: str
    correct: bool


class _Tok(NamedTuple):
    kind: str  # "num", "op", "lp", "rp", "eq"
    start: int
    end: int
    op: str = ""  # the Python operator for "op"
    digits: str = ""  # a number as Python reads it ("1200.5"); made a Fraction only when used
    decimals: int = 0


_NUM = r"[$€£]?(?:(?:[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?:\.[0-9]+)?|\.[0-9]+)(?: ?%)?"
_TOKEN_RE = re.compile(
    rf"(?P<num>{_NUM})"
    r"|(?P<op>[-+*/×÷·⋅−]|\\times|\\cdot|\\div)"
    # "x" multiplies only as a word of its own ("5 x 3", "5x3"), not inside "box" or "xyz".
    r"|(?P<x>(?<![A-Za-z])[xX](?![A-Za-z]))"
    r"|(?P<lp>\()|(?P<rp>\))|(?P<eq>=)"
    r"|(?P<sp>[ \t]+)"
    r"|(?P<word>[A-Za-z]+)"
    r"|(?P<other>[\s\S])"
)
_OPS = {"+": "+", "-": "-", "−": "-", "*": "*", "×": "*", "·": "*", "⋅": "*", "\\times": "*",
        "\\cdot": "*", "/": "/", "÷": "/", "\\div": "/", "x": "*", "X": "*"}
# Bounded inner text, no nesting: each "<<" scans at most this far.
_ANNOTATION_RE = re.compile(r"<<([^<>\n]{1,250})>>")

_BINOPS = {ast.Add: Fraction.__add__, ast.Sub: Fraction.__sub__, ast.Mult: Fraction.__mul__,
           ast.Div: Fraction.__truediv__}


def _tokenize(text: str, base: int) -> list[_Tok | None]:
    """Tokens with positions ``base + offset``; ``None`` marks a break between runs."""
    toks: list[_Tok | None] = []

    def brk() -> None:
        if toks and toks[-1] is not None:
            toks.append(None)

    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        s, e = base + m.start(), base + m.end()
        if kind == "sp":
            continue
        if kind == "num":
            raw = m.group()
            if raw.endswith("%") or len(raw) > MAX_NUMBER_CHARS:
                brk()
                continue
            digits = raw.lstrip("$€£").replace(",", "")
            decimals = len(digits.split(".", 1)[1]) if "." in digits else 0
            toks.append(_Tok("num", s, e, digits=digits, decimals=decimals))
        elif kind in ("op", "x"):
            toks.append(_Tok("op", s, e, op=_OPS[m.group()]))
        elif kind in ("lp", "rp", "eq"):
            toks.append(_Tok(kind, s, e))
        else:
            brk()
    return toks


def _runs(toks: list[_Tok | None]) -> Iterable[list[_Tok]]:
    run: list[_Tok] = []
    for t in toks:
        if t is None:
            if run:
                yield run
            run = []
        else:
            run.append(t)
    if run:
        yield run


def _is_minus(t: _Tok) -> bool:
    return t.kind == "op" and t.op == "-"


def _bad_pair(a: _Tok, b: _Tok) -> bool:
    """True when ``a b`` can never sit next to each other inside one expression."""
    if a.kind in ("num", "rp"):
        return b.kind in ("num", "lp")  # "2 3", "2(3)", ")(": no implicit multiplication
    # After an operator or "(" comes an operand; a minus there is a sign.
    return b.kind == "rp" or (b.kind == "op" and not _is_minus(b))


def _can_start(seg: list[_Tok], i: int) -> bool:
    t = seg[i]
    if t.kind in ("num", "lp"):
        return True
    # A sign only when glued to its operand: "- 48 / 2" is a bullet, "-3 + 5" a negative number.
    return (_is_minus(t) and i + 1 < len(seg) and seg[i + 1].start == t.end
            and seg[i + 1].kind in ("num", "lp"))


def _evaluate(toks: list[_Tok]) -> tuple[bool, Fraction | None]:
    """(is an expression with a binary operator, its exact value or None on division by zero)."""
    parts = []
    for t in toks:
        if t.kind == "num":
            parts.append(t.digits)
        elif t.kind == "op":
            parts.append(t.op)
        elif t.kind in ("lp", "rp"):
            parts.append("(" if t.kind == "lp" else ")")
        else:
            return False, None
    # Spaces between tokens so that "/ /" and "* *" can never become "//" or "**".
    return _evaluate_expr(" ".join(parts))


@functools.lru_cache(maxsize=8192)  # model output repeats itself, hostile input even more so
def _evaluate_expr(expr: str) -> tuple[bool, Fraction | None]:
    # Numbers become names so that the parser never sees a float: "2.5" stays Fraction("2.5").
    names: dict[str, Fraction] = {}
    parts = expr.split(" ")
    for i, part in enumerate(parts):
        if part[0].isdigit() or part[0] == ".":
            parts[i] = f"n{len(names)}"
            names[parts[i]] = Fraction(part)
    try:
        tree = ast.parse(" ".join(parts), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False, None
    binops = 0

    # The whole tree is walked even past a division by zero (None then propagates), so that a
    # non-arithmetic node anywhere still rejects the expression.
    def walk(node: ast.AST) -> Fraction | None:
        nonlocal binops
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            binops += 1
            left, right = walk(node.left), walk(node.right)
            if left is None or right is None or (right == 0 and isinstance(node.op, ast.Div)):
                return None
            return _BINOPS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            operand = walk(node.operand)
            return None if operand is None else -operand
        if isinstance(node, ast.Name) and node.id in names:
            return names[node.id]
        raise ValueError(f"not arithmetic: {type(node).__name__}")

    try:
        value = walk(tree.body)
    except (ValueError, RecursionError):
        return False, None
    return binops > 0, value


def _lhs(seg: list[_Tok]) -> tuple[int, Fraction | None] | None:
    """The longest valid expression ending ``seg``: (its first token, its value), or None."""
    n = len(seg)
    if n < 3 or seg[-1].kind not in ("num", "rp"):
        return None
    lo = 0
    for j in range(1, n):
        if _bad_pair(seg[j - 1], seg[j]):
            lo = j
    # Balanced suffixes, found in one backward pass: seg[s:] is balanced when the count of ")"
    # minus "(" is 0 over seg[s:] and never positive over any seg[t:], t > s.
    starts: list[int] = []
    depth = max_after = 0
    for s in range(n - 1, lo - 1, -1):
        depth += {"lp": 1, "rp": -1}.get(seg[s].kind, 0)
        if depth == 0 and max_after <= 0 and _can_start(seg, s):
            starts.append(s)
        max_after = max(max_after, depth)
    starts.reverse()  # longest first
    if not starts or seg[-1].end - seg[starts[0]].start > MAX_EXPRESSION_CHARS:
        return None  # a truncated expression would be judged on the wrong value
    if starts[0] == lo > 0 and seg[lo].kind == "lp" and seg[lo - 1].kind in ("num", "rp"):
        return None  # "2(3 + 4)": implicit multiplication, judging "(3 + 4)" alone would be wrong
    for s in starts[:_MAX_PARSE_TRIES]:
        ok, value = _evaluate(seg[s:])
        if ok:
            return s, value
    return None


def _matches(value: Fraction | None, claimed: Fraction, decimals: int) -> bool:
    if value is None:
        return False
    if value == claimed:
        return True
    # Written with d decimals: right when it is the value rounded to d places (either way on a tie).
    return decimals > 0 and abs(value - claimed) * 2 * 10**decimals <= 1


def _steps_in(text: str, scan: str, base: int) -> list[tuple[int, Step]]:
    """Steps found in ``scan`` (which sits at ``base`` in ``text``), keyed by their position."""
    found: list[tuple[int, Step]] = []
    # A newline cuts every run, so only lines with an "=" need tokenizing at all.
    toks: list[_Tok | None] = []
    pos = 0
    for line in scan.split("\n"):
        if "=" in line:
            toks.extend(_tokenize(line, base + pos))
            toks.append(None)
        pos += len(line) + 1
    for run in _runs(toks):
        segs: list[list[_Tok]] = [[]]
        for t in run:
            if t.kind == "eq":
                segs.append([])
            else:
                segs[-1].append(t)
        for i in range(len(segs) - 1):
            left, right = segs[i], segs[i + 1]
            if not right:
                continue
            k = 1 if _is_minus(right[0]) and len(right) > 1 else 0
            if right[k].kind != "num":
                continue
            lhs = _lhs(left)
            if lhs is None:
                continue
            s, value = lhs
            claimed = Fraction(right[k].digits) * (-1 if k else 1)
            correct = _matches(value, claimed, right[k].decimals)
            rest = right[k + 1:]
            if (not correct and value is not None and len(rest) >= 2 and rest[0].kind == "op"
                    and (rest[1].kind in ("num", "lp") or _is_minus(rest[1]))
                    and right[-1].end - right[0].start <= MAX_EXPRESSION_CHARS):
                # "(3 + 4) * 2 = 7 * 2": a rewrite of the same value, not a claimed result.
                ok, rewritten = _evaluate(right)
                if ok and rewritten == value:
                    continue
            lhs_start, lhs_end, rhs_start, rhs_end = left[s].start, left[-1].end, right[0].start, right[k].end
            step = Step(text=text[lhs_start:rhs_end], lhs=text[lhs_start:lhs_end],
                        rhs=text[rhs_start:rhs_end], correct=correct)
            found.append((lhs_start, step))
    return found


def find_steps(text: str) -> list[Step]:
    """Every checkable arithmetic equation in ``text``, in order of appearance."""
    if not isinstance(text, str):
        return []
    text = text[:MAX_TEXT_CHARS]
    found: list[tuple[int, Step]] = []
    for m in _ANNOTATION_RE.finditer(text):
        found.extend(_steps_in(text, m.group(1), m.start(1)))
    # Blank annotations with newlines (same length, so positions hold; a newline cuts the run),
    # so the prose "48/2 = " before one is left without a result and is not counted again.
    prose = _ANNOTATION_RE.sub(lambda m: "\n" * len(m.group()), text)
    found.extend(_steps_in(text, prose, 0))
    found.sort(key=lambda p: p[0])
    return [step for _, step in found]


def step_stats(texts: Iterable[str]) -> dict[str, Any]:
    """Step counts over many CoTs. ``mean_steps_per_cot`` is over all texts, those without steps
    included; ``step_accuracy`` and ``mean_steps_per_cot`` are None when there is nothing to divide."""
    cots = with_steps = steps = correct = 0
    for text in texts:
        found = find_steps(text)
        cots += 1
        with_steps += bool(found)
        steps += len(found)
        correct += sum(s.correct for s in found)
    return {
        "cots": cots,
        "cots_with_steps": with_steps,
        "steps": steps,
        "correct_steps": correct,
        "step_accuracy": correct / steps if steps else None,
        "mean_steps_per_cot": steps / cots if cots else None,
    }
