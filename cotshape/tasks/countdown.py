"""Countdown: combine the given numbers with + - * / to reach a target.

Sources:

* ``hub`` - ``Jiayi-Pan/Countdown-Tasks-3to4`` (``nums``, ``target``; one ``train`` split). The
  data holds no solution: :func:`solve` finds one by a small exact search, and problems without
  one are skipped. Train/test are split by a hash of (numbers, target), so they never overlap.
* ``offline`` - reasoning-gym's ``countdown`` with 3-4 numbers (numbers, target and one solution
  expression), split the same way.

Neither source has a human rationale, so H is a step-by-step derivation *written from the
solution expression* (:func:`derivation`: one line per operation, innermost first) ending in
``<answer>EXPR</answer>``. It is a faithful, deterministic rendering of a correct solution, not
human prose - keep that in mind when reading the H results of this task.

Grading takes the last ``<answer>...</answer>``, parses it with :mod:`ast` and accepts only
numbers, ``+ - * /``, unary minus and parentheses (no names, calls, ``**``, attributes...),
checks that every given number is used exactly once, and evaluates it with exact
:class:`~fractions.Fraction` arithmetic; division by zero is a wrong answer. Nothing is ``eval``-ed.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction
from itertools import combinations

from cotshape.core.errors import InputError
from cotshape.core.records import make_problem
from cotshape.tasks.base import Problem, Task, Verdict, is_test_key, read_hub_rows
from cotshape.tasks.registry import register

OFFLINE_SIZES = {"train": 2000, "test": 500}
TEST_FRACTION = 0.2
SEED_STRIDE = 1_000_003
MAX_EXPR_CHARS = 200
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


class ExpressionError(ValueError):
    """An answer expression that is not a plain arithmetic expression over numbers."""


def extract_answer(completion: str) -> str | None:
    """The content of the last ``<answer>...</answer>`` (stripped), or None."""
    if not isinstance(completion, str):
        return None
    found = _ANSWER_RE.findall(completion[-100_000:])
    if not found:
        return None
    expr = found[-1].strip()
    # "expr = target" is a common way of writing the answer; grade the left side
    if expr.count("=") == 1:
        expr = expr.split("=")[0].strip()
    return expr or None


def parse_expression(expr: str) -> ast.expr:
    """Parse ``expr`` and check that it only holds numbers, + - * /, unary -/+ and parentheses."""
    if len(expr) > MAX_EXPR_CHARS:
        raise ExpressionError(f"expression longer than {MAX_EXPR_CHARS} characters")
    expr = expr.replace("×", "*").replace("÷", "/").replace("−", "-")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as e:
        raise ExpressionError(f"not an expression: {type(e).__name__}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Expression | ast.operator | ast.unaryop):
            if isinstance(node, ast.operator) and type(node) not in _OPS:
                raise ExpressionError(f"operator {type(node).__name__} is not allowed (only + - * /)")
            if isinstance(node, ast.unaryop) and not isinstance(node, ast.USub | ast.UAdd):
                raise ExpressionError(f"unary operator {type(node).__name__} is not allowed")
            continue
        if isinstance(node, ast.BinOp | ast.UnaryOp):
            continue
        if isinstance(node, ast.Constant) and type(node.value) is int:
            continue
        raise ExpressionError(f"{type(node).__name__} is not allowed (only integers, + - * /, parentheses)")
    return tree.body


def _numbers(node: ast.expr) -> list[int]:
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, ast.UnaryOp):
        return _numbers(node.operand)
    return _numbers(node.left) + _numbers(node.right)


def _evaluate(node: ast.expr) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp):
        v = _evaluate(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    left, right = _evaluate(node.left), _evaluate(node.right)
    op = type(node.op)
    if op is ast.Add:
        return left + right
    if op is ast.Sub:
        return left - right
    if op is ast.Mult:
        return left * right
    if right == 0:
        raise ZeroDivisionError("division by zero")
    return left / right


def evaluate_expression(expr: str) -> tuple[Fraction, list[int]]:
    """Exact value of a whitelisted expression and the numbers it uses (never ``eval``)."""
    node = parse_expression(expr)
    return _evaluate(node), _numbers(node)


def grade(expr: str, numbers: list[int], target: int) -> tuple[bool, str]:
    """``(correct, reason)`` for an answer expression."""
    try:
        node = parse_expression(expr)
    except ExpressionError as e:
        return False, str(e)
    used = Counter(_numbers(node))
    given = Counter(numbers)
    if used != given:
        extra, missing = used - given, given - used
        parts = []
        if extra:
            parts.append(f"uses {sorted(extra.elements())} not given (or more often than given)")
        if missing:
            parts.append(f"does not use {sorted(missing.elements())}")
        return False, "; ".join(parts)
    try:
        value = _evaluate(node)
    except ZeroDivisionError:
        return False, "division by zero"
    if value != target:
        return False, f"evaluates to {value}, not {target}"
    return True, f"= {target}, each number used once"


def solve(numbers: list[int], target: int) -> str | None:
    """An expression using every number exactly once that equals ``target``, or None.

    Exact search over all ways of combining two values (Fraction arithmetic, so 3/4 stays
    exact); fine for the 3-6 numbers of Countdown.
    """

    def rec(items: list[tuple[Fraction, str]]) -> str | None:
        if len(items) == 1:
            return items[0][1] if items[0][0] == target else None
        for i, j in combinations(range(len(items)), 2):
            (a, ea), (b, eb) = items[i], items[j]
            rest = [items[k] for k in range(len(items)) if k not in (i, j)]
            cands = [(a + b, f"{ea} + {eb}"), (a * b, f"{_wrap(ea)} * {_wrap(eb)}"),
                     (a - b, f"{ea} - {_wrap(eb)}"), (b - a, f"{eb} - {_wrap(ea)}")]
            if b != 0:
                cands.append((a / b, f"{_wrap(ea)} / {_wrap(eb, True)}"))
            if a != 0:
                cands.append((b / a, f"{_wrap(eb)} / {_wrap(ea, True)}"))
            for value, text in cands:
                found = rec(rest + [(value, text)])
                if found:
                    return found
        return None

    return rec([(Fraction(n), str(n)) for n in numbers])


def _wrap(expr: str, strict: bool = False) -> str:
    """Parenthesise a sub-expression when precedence needs it."""
    if re.fullmatch(r"-?\d+", expr):
        return expr
    depth = 0
    for ch in expr:
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0 and (ch in "+-" or (strict and ch in "*/")):
            return f"({expr})"
    return expr


def derivation(expr: str, numbers: list[int], target: int) -> str:
    """H for Countdown: a step-by-step derivation written from a solution expression."""
    node = parse_expression(expr)
    steps: list[str] = []

    def walk(n: ast.expr) -> tuple[Fraction, str]:
        if isinstance(n, ast.Constant):
            return Fraction(n.value), str(n.value)
        if isinstance(n, ast.UnaryOp):
            v, _ = walk(n.operand)
            v = -v if isinstance(n.op, ast.USub) else v
            return v, _fmt(v)
        (a, ta), (b, tb) = walk(n.left), walk(n.right)
        sym = _OPS[type(n.op)]
        v = {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[sym]
        steps.append(f"Step {len(steps) + 1}: {ta} {sym} {tb} = {_fmt(v)}")
        return v, _fmt(v)

    walk(node)
    nums = ", ".join(str(n) for n in numbers)
    return (
        f"We need to reach {target} using {nums}, each exactly once.\n"
        + "\n".join(steps)
        + f"\nThis uses every number once and gives {target}.\n<answer>{expr}</answer>"
    )


#: the authors' zero-shot template (eval_countdown.py ``ZERO_SHOT_TEMPLATE``; ``nums`` is the list)
PLAIN_TEMPLATE = (
    "You are a math expert. I am going to give you a Problem that you need to solve. When you respond, "
    "respond with the Solution, thinking step by step. And return the final answer in <answer> </answer> "
    "tags, for example <answer> (1 + 2) / 3 </answer>.\nProblem:\nUsing the numbers {nums}, create an "
    "equation that equals {target}. You can use basic arithmetic operations (+, -, *, /) and each number "
    "can only be used once. Do not use any other operations or numbers.\n\nSolution:"
)
_PAPER_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>")


def paper_score(completion: str, numbers: list[int], target: int) -> tuple[float, str | None]:
    """``compute_score`` of the authors' eval_countdown.py, on the stripped completion: the
    equation is the last ``<answer>...</answer>`` of the *last line* only (0 when none: an
    unparsed answer); 0.1 when the numbers in it (``\\d+``) are not exactly the given ones or it
    does not evaluate (only digits, + - * / ( ) . and spaces; Python ``eval``, so ``5 = 5`` or
    ``1/0`` fail); 0.5 when it evaluates to another value; 1.0 when within 1e-5 of the target.
    Returns ``(score, equation)``."""
    last_line = completion.strip().split("\n")[-1]
    found = _PAPER_ANSWER_RE.findall(last_line)
    if not found:
        return 0.0, None
    equation = found[-1].strip()
    try:
        if sorted(int(n) for n in re.findall(r"\d+", equation)) != sorted(numbers):
            return 0.1, equation
    except Exception:  # noqa: BLE001
        return 0.1, equation
    if not re.match(r"^[\d+\-*/().\s]+$", equation) or len(equation) > 1000:
        return 0.1, equation
    try:
        # the authors' eval (restricted: no builtins, digits and operators only, checked above)
        result = eval(equation, {"__builtins__": None}, {})  # noqa: S307
        if abs(result - target) < 1e-5:
            return 1.0, equation
        return 0.5, equation
    except Exception:  # noqa: BLE001 - ZeroDivisionError, SyntaxError: the format score
        return 0.1, equation


def _fmt(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else f"{v.numerator}/{v.denominator}"


def _question(numbers: list[int], target: int) -> str:
    return f"Using the numbers {list(numbers)}, make {target}."


@register
class Countdown(Task):
    name = "countdown"
    hub_id = "Jiayi-Pan/Countdown-Tasks-3to4"
    instruction = (
        "Use each number exactly once, with + - * / and parentheses. "
        "Think step by step, then give the expression in <answer> </answer>."
    )

    eval_max_new_tokens = 4096  # eval_countdown.py: MAX_TOKENS = 4096

    decontaminate_text = False  # question and derivation are generated from numbers and target

    def structure_key(self, problem: Problem) -> tuple:
        """The same numbers (as a multiset) and target: one problem, however it is worded."""
        m = problem["meta"]
        return (tuple(sorted(int(n) for n in m["numbers"])), int(m["target"]))

    def base_prompt(self, problem: Problem) -> str:
        m = problem["meta"]
        return PLAIN_TEMPLATE.format(nums=list(m["numbers"]), target=m["target"])

    def paper_verify(self, problem: Problem, completion: str) -> Verdict:
        if not isinstance(completion, str) or not completion.strip():
            # the authors' scripts skip an empty generation: a parse failure
            return Verdict(False, False, None, "paper scorer: empty completion")
        m = problem["meta"]
        try:
            points, equation = paper_score(completion, list(m["numbers"]), m["target"])
        except Exception as e:  # noqa: BLE001 - a scorer must never crash on model output
            return Verdict(False, False, None, f"paper scorer failed: {type(e).__name__}")
        if equation is None:
            return Verdict(False, False, None, "paper scorer: no <answer> on the last line")
        reason = {1.0: "equals the target", 0.5: "uses the numbers, wrong value",
                  0.1: "wrong numbers or not evaluable"}[points]
        return Verdict(points >= 1.0, True, equation, f"paper scorer: score {points} ({reason})")

    def user_prompt(self, problem: Problem) -> str:
        m = problem["meta"]
        return (
            f"Using the numbers {list(m['numbers'])} each exactly once, with + - * / make "
            f"{m['target']}. Think step by step, then give the expression in <answer> </answer>."
        )

    def _problem(self, split: str, i: int, numbers: list[int], target: int, expr: str, meta: dict) -> Problem:
        return make_problem(
            id=f"countdown-{split}-{i:05d}",
            task=self.name,
            question=_question(numbers, target),
            answer=expr,
            solution=derivation(expr, numbers, target),
            meta={"numbers": list(numbers), "target": int(target), **meta},
        )

    def load_hub(self, split: str, source: str, limit: int | None, seed: int) -> list[Problem]:
        # the hub data has only a train split; our test split is carved out of it by hash
        rows = read_hub_rows(source, None, "train")
        out: list[Problem] = []
        for idx, row in enumerate(rows):
            numbers, target = [int(n) for n in row["nums"]], int(row["target"])
            if is_test_key(f"{sorted(numbers)}->{target}", TEST_FRACTION) != (split == "test"):
                continue
            expr = solve(numbers, target)
            if expr is None:
                continue
            out.append(self._problem(split, len(out), numbers, target, expr, {"source": source, "index": idx}))
            if limit and len(out) >= limit:
                break
        return out

    offline_levels = ("easy", "full")
    #: worked exemplars for a few-shot teacher (``sample.shots``), written as a chat model answers
    #: (prose, "I can ... to get ..."), not in H's "Step 1:" derivation format. Measured on the easy
    #: level (SmolLM2-135M-Instruct, 4 shots, k = 8, 40 problems): 1.3 % of samples correct, so
    #: Countdown is not part of the offline default (its G would be near empty)
    teacher_exemplars = tuple(
        {"question": _question(nums, target), "meta": {"numbers": nums, "target": target},
         "cot": f"To make {target} from {nums[0]}, {nums[1]} and {nums[2]}, I can {how}. So the expression is "
                f"{expr} = {target}.\n<answer>{expr}</answer>"}
        for nums, target, how, expr in (
            ([3, 5, 2], 13, "multiply 3 by 5 to get 15, and then subtract 2 to get 13", "3 * 5 - 2"),
            ([4, 6, 1], 11, "add 4 and 6 to get 10, and then add 1 to get 11", "4 + 6 + 1"),
            ([9, 2, 7], 14, "add 9 and 7 to get 16, and then subtract 2 to get 14", "9 + 7 - 2"),
            ([2, 8, 3], 19, "multiply 2 by 8 to get 16, and then add 3 to get 19", "2 * 8 + 3"),
        )
    )

    def load_offline(self, split: str, limit: int | None, seed: int, level: str = "full") -> list[Problem]:
        import reasoning_gym

        want = limit or OFFLINE_SIZES[split]
        # items are generated lazily (item i is seeded with seed + i): spread the seeds apart
        pool = 64 + 50 * want
        if level == "easy":  # the CPU proxy: three numbers 1-9, + - * only, targets up to 30
            ds = reasoning_gym.create_dataset(
                "countdown", size=pool, seed=seed * SEED_STRIDE, min_numbers=3, max_numbers=3, min_value=1,
                max_value=9, min_target=2, max_target=30, operators=("+", "-", "*"),
            )
        else:
            ds = reasoning_gym.create_dataset(
                "countdown", size=pool, seed=seed * SEED_STRIDE, min_numbers=3, max_numbers=4,
                min_target=10, max_target=100,
            )
        out: list[Problem] = []
        seen: set[str] = set()
        for idx in range(pool):
            item = ds[idx]
            numbers, target = list(item["metadata"]["numbers"]), int(item["metadata"]["target"])
            key = f"{sorted(numbers)}->{target}"
            if (key in seen or is_test_key(key, TEST_FRACTION) != (split == "test")
                    or self.is_exemplar(_question(numbers, target))):
                continue
            expr = item["metadata"]["expression"]
            if not grade(expr, numbers, target)[0]:  # reasoning-gym allows "at most once"
                expr = solve(numbers, target)
                if expr is None:
                    continue
            seen.add(key)
            meta = {"source": "reasoning_gym/countdown", "seed": seed, "index": idx, "level": level}
            out.append(self._problem(split, len(out), numbers, target, expr, meta))
            if len(out) >= want:
                break
        if limit and len(out) < limit:
            raise InputError(f"countdown offline: only {len(out)} distinct {split} problems for limit={limit}")
        return out

    def extract_answer(self, completion: str) -> str | None:
        return extract_answer(completion)

    def check(self, problem: Problem, extracted: str, completion: str) -> Verdict:
        ok, reason = grade(extracted, problem["meta"]["numbers"], problem["meta"]["target"])
        return Verdict(ok, True, extracted, reason)
