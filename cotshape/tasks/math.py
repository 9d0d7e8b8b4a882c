"""MATH: competition mathematics with LaTeX answers, graded by symbolic equivalence.

Sources:

* ``hub`` - ``EleutherAI/hendrycks_math``, every subject config (``algebra``, ...,
  ``precalculus``; fields ``problem``, ``solution``, ``level``, ``type``). The gold answer is the
  content of the last ``\\boxed{}`` of the solution; the solution itself is H.
* ``offline`` - :mod:`cotshape.tasks.mathgen`, a seeded generator of MATH-style problems with
  worked LaTeX solutions ending in ``\\boxed{...}``; train/test split by a hash of the question.

Grading (:func:`math_equal`): the answer is the content of the last ``\\boxed{}`` of the
completion (else a final "the answer is $X$"). Plain numbers (integers, decimals, ``a/b``,
``\\frac{a}{b}``, thousands commas, unicode minus) are compared exactly with Fractions - that is
most answers and costs microseconds; everything else (and any numeric mismatch that involves a
decimal, where math-verify's rounding rules apply) goes to math-verify (``parse`` + ``verify``),
with the gold parsed once per gold string (cached). math-verify's own alarms bound its time in
the main thread; answers that could make sympy compute for minutes in C code (huge exponents,
factorials, very long input) are compared as text instead; batch verification
(:mod:`cotshape.data.verify`) additionally runs math-verify in worker processes that are killed on
a hard per-item deadline. ``verify`` never raises.
"""

from __future__ import annotations

import cmath
import re
import threading
from collections import OrderedDict
from fractions import Fraction
from typing import Any

from cotshape.core.errors import DataNotFoundError, InputError
from cotshape.core.records import make_problem
from cotshape.tasks.base import (
    MATH_PLAIN_TEMPLATE,
    Problem,
    Task,
    Verdict,
    is_test_key,
    read_hub_rows,
    stable_bucket,
)
from cotshape.tasks.mathgen import generate
from cotshape.tasks.registry import register

SUBJECTS = (
    "algebra",
    "counting_and_probability",
    "geometry",
    "intermediate_algebra",
    "number_theory",
    "prealgebra",
    "precalculus",
)
OFFLINE_SIZES = {"train": 2000, "test": 500}
TEST_FRACTION = 0.2
MAX_ANSWER_CHARS = 300
MV_TIMEOUT_S = 5
_GOLD_CACHE_SIZE = 50_000
_gold_cache: OrderedDict[str, Any] = OrderedDict()
# a sampled model repeats its wrong answers across problems ("0", "x + 1"): parse each once
_pred_cache: OrderedDict[str, Any] = OrderedDict()
_warm = False

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_ANSWER_IS_RE = re.compile(r"answer is[:\s]*\$([^$]{1,300})\$", re.IGNORECASE)
_NUM_RE = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_FRAC_RE = re.compile(r"(-?)\\[dt]?frac\s*\{\s*(-?\d+)\s*\}\s*\{\s*(-?\d+)\s*\}")
_FRAC_SHORT_RE = re.compile(r"(-?)\\[dt]?frac\s*(\d)(\d)")
# sympy evaluates these eagerly in C (no alarm can stop it): 10^{100000}, 99999!, towers
_RISKY_RE = re.compile(r"\^\s*\{?\s*[-+]?\d{4,}|\d{3,}\s*!|\*\*|\^[^$]*\^[^$]*\^|\\binom\s*\{\s*\d{4,}")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces), or None."""
    matches = list(_BOX_RE.finditer(text))
    for m in reversed(matches):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth = 0
            for j in range(i, min(len(text), i + 10_000)):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        return text[i + 1 : j].strip()
            continue  # unbalanced: try an earlier box
        # "\boxed 5": one token without braces
        tok = re.match(r"[^\s$]+", text[i:])
        if tok:
            return tok.group(0).rstrip(".")
    return None


def normalize(answer: str) -> str:
    """Light, meaning-preserving clean-up before comparison."""
    s = answer.strip().replace("−", "-").replace("–", "-")
    s = re.sub(r"\\[,!;: ]|\\left|\\right", "", s)
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = s.strip().strip("$").strip()
    return s.rstrip(".").strip()


def extract_answer(completion: str) -> str | None:
    """The final answer of a completion: last ``\\boxed{}``, else "the answer is $X$"."""
    if not isinstance(completion, str):
        return None
    text = completion[-100_000:]
    boxed = last_boxed(text)
    if boxed is None:
        found = _ANSWER_IS_RE.findall(text)
        boxed = found[-1] if found else None
    if boxed is None:
        return None
    boxed = normalize(boxed)
    return boxed or None


def simple_value(s: str) -> tuple[Fraction, bool] | None:
    """``(value, has_decimal)`` when ``s`` is a plain number (``-3``, ``1,000``, ``0.5``, ``3/4``,
    ``\\frac{3}{4}``, ``-\\frac34``), else None."""
    s = normalize(s).replace(" ", "")
    if s.startswith("\\$"):
        s = s[2:]
    m = _FRAC_RE.fullmatch(s) or _FRAC_SHORT_RE.fullmatch(s)
    if m:
        num, den = int(m.group(2)), int(m.group(3))
        if den == 0:
            return None
        v = Fraction(num, den)
        return (-v if m.group(1) else v), False
    if "/" in s:
        a, _, b = s.partition("/")
        if re.fullmatch(r"-?\d+", a) and re.fullmatch(r"-?\d+", b) and int(b) != 0:
            return Fraction(int(a), int(b)), False
        return None
    if _NUM_RE.fullmatch(s):
        if "," in s and not re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
            return None
        return Fraction(s.replace(",", "")), "." in s
    return None


def simple_list(s: str) -> set[Fraction] | None:
    """The set of values of a comma-separated list of exact plain numbers (``-3, 2``), or None
    (also for a single number, or when any item is a decimal or not a plain number)."""
    s = normalize(s)
    if "," not in s or simple_value(s) is not None:
        return None
    values = set()
    for part in s.split(","):
        v = simple_value(part)
        if v is None or v[1]:
            return None
        values.add(v[0])
    return values


def _mv_timeout() -> int | None:
    # math-verify's alarms only work in the main thread (signal.signal raises elsewhere)
    return MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def _parse_gold(gold: str) -> Any:
    """math-verify parse of a gold answer, cached per gold string (one parse per problem)."""
    hit = _gold_cache.get(gold)
    if hit is not None:
        _gold_cache.move_to_end(gold)
        return hit
    from math_verify import parse

    parsed = parse(f"\\boxed{{{gold}}}", parsing_timeout=_mv_timeout())
    _gold_cache[gold] = parsed
    if len(_gold_cache) > _GOLD_CACHE_SIZE:
        _gold_cache.popitem(last=False)
    return parsed


def _parse_pred(pred: str) -> Any:
    hit = _pred_cache.get(pred)
    if hit is None:
        from math_verify import parse

        hit = parse(f"\\boxed{{{pred}}}", parsing_timeout=_mv_timeout())
        _pred_cache[pred] = hit
        if len(_pred_cache) > _GOLD_CACHE_SIZE:
            _pred_cache.popitem(last=False)
    return hit


def _symbolic_equal(gold: str, pred: str) -> tuple[bool, str]:
    from math_verify import verify

    p = _parse_pred(pred)
    if not p:
        return False, f"{pred!r} is not parseable as math"
    # a plain-number gold needs no parse at all when the answer is clearly not that number
    quick = _number_vs_expression(gold, None, pred, p[0])
    if quick is not None:
        return quick
    g = _parse_gold(gold)
    if not g:
        return normalize(gold) == pred, "gold not parseable by math-verify; compared as text"
    quick = _number_vs_expression(gold, g[0], pred, p[0])
    if quick is not None:
        return quick
    if verify(g, p, timeout_seconds=_mv_timeout()):
        return True, "symbolically equal to the gold answer"
    return False, f"{pred} != gold {gold}"


def fast_equal(gold: str, pred: str) -> tuple[bool, str] | None:
    """The cheap part of :func:`math_equal`: a verdict without math-verify, or None when a
    symbolic comparison is needed."""
    pred, gold = normalize(pred), normalize(gold)
    if pred == gold:
        return True, "identical to the gold answer"
    if len(pred) > MAX_ANSWER_CHARS:
        return False, f"answer longer than {MAX_ANSWER_CHARS} characters"
    g, p = simple_value(gold), simple_value(pred)
    if g is not None and p is not None:
        if g[0] == p[0]:
            return True, "numerically equal to the gold answer"
        if not (g[1] or p[1]):  # exact rationals differ; with decimals math-verify's rounding decides
            return False, f"{pred} != gold {gold}"
    gl, pl = simple_list(gold), simple_list(pred)
    if gl is not None and (pl is not None or p is not None):
        # solution sets ("-3, 2"): math-verify compares them as sets, order-free
        pset = pl if pl is not None else {p[0]}
        if gl == pset:
            return True, "the same set of values as the gold answer"
        return False, f"{pred} != gold {gold}"
    if _RISKY_RE.search(pred) or _RISKY_RE.search(gold):
        return False, "answer too costly to compare symbolically (huge power/factorial); text differs"
    return None


def _number_vs_expression(gold: str, g: Any, pred: str, p: Any) -> tuple[bool, str] | None:
    """A plain-number answer against a parsed expression, settled without ``verify`` (which
    spends ~20 ms simplifying): an expression with free symbols never equals a number, and a
    constant expression whose value is clearly different is not equal. None: ask ``verify``."""
    import sympy

    for num_text, expr in ((gold, p), (pred, g)):
        num = simple_value(num_text) if expr is not None else None
        if num is None or not isinstance(expr, sympy.Expr) or isinstance(expr, sympy.core.relational.Relational):
            continue
        # An expression equal to a number takes that value everywhere (sin^2 x + cos^2 x = 1),
        # so one finite value far from the number - at an arbitrary point for the free
        # symbols - proves them different. Equal-looking cases are left to verify.
        point = {sym: sympy.Rational(6180 + 1379 * k, 10000) for k, sym in enumerate(sorted(expr.free_symbols, key=str))}
        try:
            value = complex(expr.evalf(30, subs=point))
        except (TypeError, ValueError, ArithmeticError):
            continue
        target = float(num[0])
        if cmath.isfinite(value) and abs(value - target) > 1e-4 * max(1.0, abs(target)):
            what = "an expression in a variable" if point else f"value {value.real:.6g}"
            return False, f"{pred} != gold {gold} ({what})"
    return None


def math_equal(gold: str, pred: str) -> tuple[bool, str]:
    """``(equal, reason)``: is ``pred`` equivalent to the gold answer? Never raises."""
    try:
        fast = fast_equal(gold, pred)
        if fast is not None:
            return fast
        return _symbolic_equal(normalize(gold), normalize(pred))
    except Exception as e:  # noqa: BLE001 - math-verify/sympy may raise anything on odd input
        return False, f"comparison failed: {type(e).__name__}"


def _warm_up() -> None:
    """One symbolic comparison, so that math-verify's first-call cost (~0.5 s of lazy imports
    and grammar set-up) is paid once, before worker processes are forked."""
    global _warm
    if not _warm:
        math_equal("x + 1", "\\sqrt{2}")
        _warm = True


def grade_pair(gold: str, pred: str) -> tuple[bool, str]:
    """Picklable entry point for worker processes (see :mod:`cotshape.data.verify`)."""
    return math_equal(gold, pred)


def _paper_parse(text: str) -> Any:
    """``extract_final_answer`` of the authors' eval_math_gsm8k.py: math-verify ``parse`` of the
    whole text; None when nothing parses, it raises, or a parsed string is over 5,000 characters."""
    from math_verify import parse

    try:
        parsed = parse(text, parsing_timeout=_mv_timeout())
    except Exception:  # noqa: BLE001 - as the authors' scorer: unparseable
        return None
    if not parsed or any(isinstance(x, str) and len(x) > 5000 for x in parsed):
        return None
    return parsed


def paper_math_verdict(gold_solution: str, completion: str) -> Verdict:
    """The authors' MATH/GSM8K scorer (eval_math_gsm8k.py): math-verify ``parse`` on the *full*
    gold solution and the *full* completion (stripped, as their vLLM output), then ``verify``.
    Either side unparseable, or ``verify`` raising, is an unparsed answer (their scripts leave
    both out of the accuracy's denominator). Unlike the strict grader there is no final-answer
    extraction: math-verify takes whichever answer it finds (a last ``\\boxed{}``, else the last
    expression), so "The answer is 7. Check: 7 + 1 = 8" can read 8."""
    from math_verify import verify

    gold = _paper_parse(gold_solution)
    pred = _paper_parse(completion.strip())
    if gold is None or pred is None:
        which = "gold solution" if gold is None else "completion"
        return Verdict(False, False, None, f"paper scorer: math-verify found no answer in the {which}")
    extracted = str(pred[-1]) if len(pred) > 1 else str(pred[0])
    try:
        ok = bool(verify(gold, pred, timeout_seconds=_mv_timeout()))
    except Exception as e:  # noqa: BLE001
        return Verdict(False, False, extracted, f"paper scorer: verify failed ({type(e).__name__})")
    return Verdict(ok, True, extracted, "paper scorer: math-verify " + ("equal" if ok else f"{extracted} != gold"))


@register
class MATH(Task):
    name = "math"
    hub_id = "EleutherAI/hendrycks_math"
    instruction = "Solve step by step, and put the final answer in \\boxed{}."
    eval_max_new_tokens = 2048  # eval_math_gsm8k.py: MAX_TOKENS = 2048

    def base_prompt(self, problem: Problem) -> str:
        """The authors' zero-shot template (eval_math_gsm8k.py ``ZERO_SHOT_TEMPLATE``)."""
        return MATH_PLAIN_TEMPLATE.format(problem=problem["question"])

    def paper_verify(self, problem: Problem, completion: str) -> Verdict:
        return paper_math_verdict(problem["solution"], completion) if isinstance(completion, str) else \
            Verdict(False, False, None, "completion is not a string")

    def load_hub(self, split: str, source: str, limit: int | None, seed: int) -> list[Problem]:
        from pathlib import Path

        root = Path(source)
        configs = [c for c in SUBJECTS if (root / c).is_dir()] if root.is_dir() else list(SUBJECTS)
        if not configs:
            raise DataNotFoundError(f"{source}: none of the MATH subject folders ({', '.join(SUBJECTS)})")
        out: list[Problem] = []
        for config in configs:
            for row in read_hub_rows(source, config, split):
                gold = last_boxed(row["solution"])
                if gold is None:  # a handful of MATH solutions have no \boxed{}: no gold, skip
                    continue
                out.append(
                    make_problem(
                        id=f"math-{split}-{len(out):05d}",
                        task=self.name,
                        question=row["problem"].strip(),
                        answer=gold,
                        solution=row["solution"].strip(),
                        meta={"subject": config, "level": row.get("level", ""), "type": row.get("type", ""),
                              "source": source},
                    )
                )
        if limit and limit < len(out):
            # the files are sorted by subject: a plain prefix would be all algebra. Take the
            # `limit` problems first in a seeded hash order (a larger limit keeps the smaller
            # subset), in their original order.
            keep = set(sorted(range(len(out)), key=lambda i: stable_bucket(f"{seed}:{out[i]['id']}", 2**61))[:limit])
            out = [p for i, p in enumerate(out) if i in keep]
        return out

    def load_offline(self, split: str, limit: int | None, seed: int, level: str = "full") -> list[Problem]:
        want = limit or OFFLINE_SIZES[split]
        out: list[Problem] = []
        seen: set[str] = set()
        for idx in range(64 + 50 * want):
            g = generate(idx, seed)
            q = g["question"]
            if q in seen or is_test_key(q, TEST_FRACTION) != (split == "test"):
                continue
            seen.add(q)
            out.append(
                make_problem(
                    id=f"math-{split}-{len(out):05d}",
                    task=self.name,
                    question=q,
                    answer=g["answer"],
                    solution=g["solution"],
                    meta={"family": g["family"], "source": "cotshape/mathgen", "seed": seed, "index": idx},
                )
            )
            if len(out) >= want:
                break
        if limit and len(out) < limit:
            raise InputError(f"math offline: only {len(out)} distinct {split} problems for limit={limit}")
        return out

    def extract_answer(self, completion: str) -> str | None:
        return extract_answer(completion)

    def check(self, problem: Problem, extracted: str, completion: str) -> Verdict:
        ok, reason = math_equal(problem["answer"], extracted)
        return Verdict(ok, True, extracted, reason)

    def check_many(
        self, items: list[tuple[Problem, str]], workers: int | None = None, progress: bool = True
    ) -> list[Verdict]:
        """Plain numbers are settled here; the rest go to math-verify in a :class:`GuardedPool`
        (hard per-item deadline), sorted by gold so each worker parses a gold once."""
        from cotshape.execution.pool import GuardedPool

        verdicts: list[Verdict | None] = [None] * len(items)
        pending: list[int] = []
        for i, (problem, extracted) in enumerate(items):
            try:
                fast = fast_equal(problem["answer"], extracted)
            except Exception as e:  # noqa: BLE001
                fast = (False, f"comparison failed: {type(e).__name__}")
            if fast is None:
                pending.append(i)
            else:
                verdicts[i] = Verdict(fast[0], True, extracted, fast[1])
        if not pending:
            return verdicts  # type: ignore[return-value]
        # the verdict depends only on (gold, answer): problems sharing a gold share the work
        keys = sorted({(items[i][0]["answer"], items[i][1]) for i in pending})
        _warm_up()  # before forking, so the workers inherit sympy's lazily built state
        pool = GuardedPool(grade_pair, workers=workers, item_timeout_s=4 * MV_TIMEOUT_S)
        results = dict(zip(keys, pool.map(keys, progress=progress, desc="math-verify"), strict=True))
        for i in pending:
            status, value = results[(items[i][0]["answer"], items[i][1])]
            ok, reason = value if status == "ok" else (False, f"{status}: {value}")
            verdicts[i] = Verdict(ok, True, items[i][1], reason)
        return verdicts  # type: ignore[return-value]
