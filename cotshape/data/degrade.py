"""Degraded training sets: flawed mixtures and step-level corruption.

Two kinds, both seeded (every random choice comes from a generator keyed by the seed and the
problem id, so adding a problem or a fraction never changes the others):

**(a) Mixtures.** For each fraction ``p`` a set of the same size as G in which a fraction ``p``
of the CoTs is replaced by a *completely flawed* CoT for the same problem. The problems to
replace are the first ``round(p * n)`` of one seeded permutation, so mixtures are nested (the
flawed problems at 25 % are among those at 50 %) and the curve varies only the fraction.
A flawed CoT comes from

* ``corrupt`` — :func:`corrupt_cot` on the problem's own correct CoT with the derived numbers of
  *every* step changed, the steps shuffled and the final answer made wrong, checked wrong with
  the task verifier; or
* ``model`` — the teacher prompted to reason wrongly (``Task.flawed_messages``), checked wrong.

If no flawed CoT that verifies wrong can be produced for a problem, its correct CoT is kept and
counted in ``flawed_unavailable`` (the metrics say so; the set keeps its size).

What a corruption keeps (:class:`Keep`, from the task and the problem by :func:`keep_for`): the
numbers the problem states (a restatement of the problem stays intact; only derived numbers
change), the final-answer line as the *last* line in its shape (``The answer is N.``,
``\\boxed{}``, ``<answer>...</answer>``) with a wrong value, and for a code task
(``Task.answer_kind == "code"``, MBPP) valid Python: numbers, operators and comparisons of the
function bodies change, the lines, ``def`` lines and prose stay (:func:`corrupt_code`).

Example (programmatic corruption of every step of a GSM8K CoT)::

    >>> import random
    >>> from cotshape.tasks.gsm8k import GSM8K
    >>> cot = "Tom has 3 apples.\\nHe buys 4 more.\\n3 + 4 = 7\\nThe answer is 7."
    >>> keep = keep_for(GSM8K(), {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?"})
    >>> corrupt_cot(cot, random.Random(0), keep)
    'Tom has 3 apples.\\n3 + 4 = 9\\nHe buys 4 more.\\nThe answer is 5.'

**(b) Step-level.** A correct CoT with ``k`` of its steps corrupted (:func:`degrade_steps`): each
chosen step has its derived numbers perturbed; a step without one (say, a restatement of the
problem) is dropped or swapped with its neighbour. The final answer line is never among the chosen steps
and stays last, so the set isolates flawed *reasoning* from a flawed *answer*. ``degrade.step_k``
is a list: one set per k (``step-1``, ``step-2``, ... :func:`cotshape.core.artifacts.step_set_name`).

    >>> degrade_steps(cot, 1, random.Random(0), keep)
    'Tom has 3 apples.\\nHe buys 4 more.\\n3 + 4 = 4\\nThe answer is 7.'
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

NUMBER = re.compile(r"(?<![\w.])(\d+(?:\.\d+)?)(?![\w])")
#: an arithmetic operator between operands in prose or an expression ("3 * 5 - 2", "(4+6)")
TEXT_OP = re.compile(r"(?<=[\d\s)])([+\-*/×÷])(?=[\s\d(])")
TEXT_OP_SWAP = {"+": "-", "-": "+", "*": "+", "/": "*", "×": "+", "÷": "×"}
#: code tokens swapped by a code corruption: arithmetic, comparisons, booleans
CODE_SWAP = {"+": "-", "-": "+", "*": "+", "//": "*", "%": "//", "<": ">=", ">": "<=", "<=": ">", ">=": "<",
             "==": "!=", "!=": "==", "and": "or", "or": "and", "True": "False", "False": "True"}
_FENCE = re.compile(r"(```[ \t]*(?:python3?|py)?[ \t]*\n)(.*?)(```|\Z)", re.DOTALL | re.IGNORECASE)


@dataclass(frozen=True)
class Keep:
    """What a degradation of one problem's CoT leaves intact.

    ``numbers``: the numbers stated in the problem (normalised values): a restatement of the
    problem keeps them, only derived numbers change. ``code``: the CoT's answer is code (the
    task's ``answer_kind == "code"``): it stays valid Python with its lines and signatures in
    place. ``extract``: the task's answer extractor, to find the final-answer line, which stays
    the last line (None: the last step is the answer line).
    """

    numbers: frozenset[str] = frozenset()
    code: bool = False
    extract: Callable[[str], str | None] | None = None


def _norm(number: str) -> str:
    return repr(float(number))


def keep_for(task: Any = None, problem: dict[str, Any] | None = None) -> Keep:
    """The :class:`Keep` of a problem of ``task`` (either may be None: nothing task-specific)."""
    question = str((problem or {}).get("question", ""))
    return Keep(numbers=frozenset(_norm(n) for n in NUMBER.findall(question)),
                code=getattr(task, "answer_kind", "text") == "code",
                extract=getattr(task, "extract_answer", None))


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


def perturb_numbers(step: str, rng: random.Random, keep: frozenset[str] = frozenset()) -> tuple[str, int]:
    """Perturb every number of a step except those whose value is in ``keep`` (the problem's
    own numbers); returns (new step, numbers changed)."""
    count = 0

    def repl(m: re.Match) -> str:
        nonlocal count
        if _norm(m.group(1)) in keep:
            return m.group(0)
        count += 1
        return perturb_number(m.group(1), rng)

    return NUMBER.sub(repl, step), count


def perturb_operators(step: str) -> tuple[str, int]:
    """Swap every arithmetic operator between operands (``+`` -> ``-``, ``*`` -> ``+``, ...)."""
    count = 0

    def repl(m: re.Match) -> str:
        nonlocal count
        count += 1
        return TEXT_OP_SWAP[m.group(1)]

    return TEXT_OP.sub(repl, step), count


def split_steps(cot: str) -> list[str]:
    """Steps of a CoT: its non-empty lines, or its sentences for a one-line CoT."""
    lines = [ln for ln in cot.split("\n") if ln.strip()]
    if len(lines) > 1:
        return lines
    return [s for s in re.split(r"(?<=[.!?])\s+", cot.strip()) if s]


def answer_index(steps: list[str], extract: Callable[[str], str | None] | None = None) -> int:
    """Index of the final-answer step: the last step from which ``extract`` reads the CoT's
    final answer; the last step when there is no extractor or no such step."""
    if extract is None or not steps:
        return len(steps) - 1
    final = extract("\n".join(steps))
    if final is not None:
        for i in range(len(steps) - 1, -1, -1):
            if extract(steps[i]) == final:
                return i
    return len(steps) - 1


def _changeable(step: str, keep: frozenset[str]) -> bool:
    """True when ``step`` has a derived number (one the problem does not state)."""
    return any(_norm(n) not in keep for n in NUMBER.findall(step))


def _wrong_answer(line: str, rng: random.Random, keep: frozenset[str]) -> str:
    """The final-answer line with a wrong value, same shape (``The answer is N.``, ``\\boxed{}``,
    ``<answer>expr</answer>``): its derived numbers changed, else its operators swapped (an
    expression of the problem's numbers), else its numbers changed anyway (the answer is a
    number the problem states)."""
    new, n = perturb_numbers(line, rng, keep)
    if not n:
        new, n = perturb_operators(line)
    return new if n else perturb_numbers(line, rng)[0]


# ---- code (answer_kind "code"): stays valid Python, behaves wrongly ------------------------------


def _code_sites(code: str) -> dict[int, list[tuple[int, int, str]]] | None:
    """Tokens a corruption may change, by line: ``{line: [(col, end_col, replacement)]}`` for
    the numbers, operators, comparisons and booleans of function bodies (never a ``def`` line,
    a decorator or a docstring); every line but imports when there is no function. None when
    ``code`` is not Python."""
    import ast
    import io
    import tokenize

    try:
        tree = ast.parse(code)
        toks = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (SyntaxError, ValueError, tokenize.TokenError, IndentationError, RecursionError, MemoryError):
        return None
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    body: set[int] = set()
    for f in funcs:
        first = f.body[0]
        stmts = f.body[1:] if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
            and isinstance(first.value.value, str) else f.body
        for st in stmts:
            if not isinstance(st, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                body.update(range(st.lineno, (st.end_lineno or st.lineno) + 1))
    for f in funcs:  # a nested def's own line and signature stay
        body.difference_update(range(f.lineno, f.body[0].lineno))
    if not funcs:
        body = {ln for st in tree.body if not isinstance(st, ast.Import | ast.ImportFrom)
                for ln in range(st.lineno, (st.end_lineno or st.lineno) + 1)}
    sites: dict[int, list[tuple[int, int, str]]] = {}
    for t in toks:
        (row, col), (erow, ecol) = t.start, t.end
        if row not in body or row != erow:
            continue
        if t.type == tokenize.NUMBER and re.fullmatch(r"\d+(?:\.\d+)?", t.string):
            sites.setdefault(row, []).append((col, ecol, "#num"))
        elif t.string in CODE_SWAP and t.type in (tokenize.OP, tokenize.NAME):
            sites.setdefault(row, []).append((col, ecol, CODE_SWAP[t.string]))
    return sites


def corrupt_code(code: str, rng: random.Random, lines: int | None = None) -> tuple[str, int]:
    """Code that still parses but behaves wrongly: numbers perturbed and operators, comparisons
    and booleans swapped on every body line that has any (``lines`` = k: on k of them, drawn
    with ``rng``, the first k of one seeded order, so k's lines are among k+1's). Line order,
    ``def`` lines and docstrings stay. Returns (code, tokens changed); (code, 0) when nothing
    could change or the result would not parse."""
    import ast

    sites = _code_sites(code)
    if not sites:
        return code, 0
    rows = sorted(sites)
    if lines is not None:
        rng.shuffle(rows)
        rows = sorted(rows[:lines])
    base = rng.getrandbits(64)
    src = code.split("\n")
    count = 0
    for row in rows:
        sub = random.Random(f"{base}\x00{row}")
        line = src[row - 1]
        for col, end, repl in sorted(sites[row], reverse=True):  # right to left: columns stay valid
            new = perturb_number(line[col:end], sub) if repl == "#num" else repl
            line = line[:col] + new + line[end:]
            count += 1
        src[row - 1] = line
    out = "\n".join(src)
    try:
        ast.parse(out)
    except SyntaxError:
        return code, 0
    return out, count


def _corrupt_code_cot(cot: str, rng: random.Random, lines: int | None) -> str:
    """Corrupt the fenced Python blocks of a CoT (all of them; with ``lines``: the last one,
    the answer), or the whole text when it is code without a fence. Prose is kept."""
    blocks = list(_FENCE.finditer(cot))
    if not blocks:
        return corrupt_code(cot, rng, lines)[0]
    targets = blocks if lines is None else blocks[-1:]
    out, last = [], 0
    for m in blocks:
        body = corrupt_code(m.group(2), rng, lines)[0] if m in targets else m.group(2)
        out += [cot[last:m.start(2)], body]
        last = m.end(2)
    return "".join(out) + cot[last:]


# ---- whole CoTs ---------------------------------------------------------------------------------


def corrupt_cot(cot: str, rng: random.Random, keep: Keep | None = None) -> str:
    """Completely flawed version of a CoT.

    Text: the derived numbers of every step changed and the steps shuffled, so the order of
    reasoning is broken too; the numbers the problem states (``keep.numbers``) stay, so a
    restatement of the problem is intact; the final-answer line (:func:`answer_index`) stays
    the last line, in its shape, with a wrong value (:func:`_wrong_answer`). Code (``keep.code``): :func:`corrupt_code` on its Python blocks.
    """
    keep = keep or Keep()
    if keep.code:
        return _corrupt_code_cot(cot, rng, None)
    steps = split_steps(cot)
    if not steps:
        return cot
    a = answer_index(steps, keep.extract)
    answer = _wrong_answer(steps[a], rng, keep.numbers)
    body = [perturb_numbers(s, rng, keep.numbers)[0] for i, s in enumerate(steps) if i != a]
    if len(body) > 1:
        order = list(range(len(body)))
        while order == sorted(order):
            rng.shuffle(order)
        body = [body[i] for i in order]
    return "\n".join([*body, answer])


def degrade_steps(cot: str, k: int, rng: random.Random, keep: Keep | None = None) -> str:
    """Corrupt ``k`` of the CoT's reasoning steps, never its final-answer line, which stays
    (or becomes) the last line. A chosen step gets its derived numbers changed (``keep.numbers``
    stay); a step without one is dropped or swapped with its neighbour. The chosen steps are
    the first ``k`` of one seeded order (steps with a derived number first), so those of ``k``
    are among those of ``k + 1``. Code (``keep.code``): ``k`` lines of the answer's code
    corrupted, still valid Python."""
    keep = keep or Keep()
    if keep.code:
        return _corrupt_code_cot(cot, rng, k)
    steps = split_steps(cot)
    if len(steps) < 2:
        return perturb_numbers(cot, rng, keep.numbers)[0] if k > 0 else cot
    a = answer_index(steps, keep.extract)
    steps = [s for i, s in enumerate(steps) if i != a] + [steps[a]]
    # steps with a derived number first, then the rest (e.g. a bare restatement of the problem,
    # which is dropped or swapped only when k exceeds the others)
    can = [i for i in range(len(steps) - 1) if _changeable(steps[i], keep.numbers)]
    rest = [i for i in range(len(steps) - 1) if i not in can]
    rng.shuffle(can)
    rng.shuffle(rest)
    order = can + rest
    base = rng.getrandbits(64)
    chosen = sorted(order[:k])
    dropped: set[int] = set()
    for i in chosen:
        sub = random.Random(f"{base}\x00{i}")
        new, changed = perturb_numbers(steps[i], sub, keep.numbers)
        if changed:
            steps[i] = new
        elif i + 1 < len(steps) - 1 and sub.random() < 0.5:
            steps[i], steps[i + 1] = steps[i + 1], steps[i]
        else:
            dropped.add(i)
    return "\n".join(s for i, s in enumerate(steps) if i not in dropped)


def reasoning_steps(cot: str, keep: Keep | None = None) -> int | None:
    """How many reasoning steps :func:`degrade_steps` can corrupt in ``cot``: its lines other than
    the final-answer line (a one-line CoT counts as one). None for code, whose lines are counted
    differently (:func:`_corrupt_code_cot`)."""
    if (keep or Keep()).code:
        return None
    steps = split_steps(cot)
    return 1 if len(steps) < 2 else len(steps) - 1


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
    task: Any = None,
    problems: dict[str, dict[str, Any]] | None = None,
) -> dict[str, str]:
    """For each correct CoT record, a corrupted CoT (:func:`corrupt_cot`) that
    ``is_wrong(problem_id, text)``. With ``task`` and ``problems`` (by id) the corruption keeps
    the problem's numbers, the answer line and, for code, valid Python (:func:`keep_for`).

    Problems where ``attempts`` corruptions all still verify correct get no entry.
    """
    out: dict[str, str] = {}
    for rec in records:
        rng = random.Random(f"{seed}\x00{rec['problem_id']}\x00corrupt")
        keep = keep_for(task, (problems or {}).get(rec["problem_id"]))
        for _ in range(attempts):
            cand = corrupt_cot(rec["completion"], rng, keep)
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




def make_step_degraded(good: list[dict[str, Any]], k: int, seed: int, task: Any = None,
                       problems: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The step-degraded set: every correct CoT with ``k`` steps corrupted (:func:`degrade_steps`;
    ``task`` and ``problems`` by id as for :func:`flawed_from_corruption`). A problem's generator
    does not depend on ``k``, so the steps corrupted at ``k`` are among those at ``k + 1``.
    ``degraded_steps`` records how many were: fewer than ``k`` for a CoT with fewer reasoning
    steps (:func:`reasoning_steps`), which then equals its degradation at the smaller ``k``."""
    out = []
    for r in good:
        rng = random.Random(f"{seed}\x00{r['problem_id']}\x00steps")
        keep = keep_for(task, (problems or {}).get(r["problem_id"]))
        n = reasoning_steps(r["completion"], keep)
        out.append(dict(r, completion=degrade_steps(r["completion"], k, rng, keep),
                        degraded_steps=k if n is None else min(k, n)))
    return out
