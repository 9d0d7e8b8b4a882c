"""GSM8K: grade-school word problems with a numeric final answer.

Sources:

* ``hub`` - ``openai/gsm8k`` (config ``main``): ``question`` and ``answer``, where ``answer`` is
  the worked solution ending in ``#### N`` (with ``<<48/2=24>>`` calculator annotations).
* ``offline`` - reasoning-gym's ``gsm_symbolic`` (GSM8K templates with fresh numbers), whose
  ``answer_cot`` is a worked solution ending in ``#### N``. Items are split into train/test by a
  hash of the question, so the two splits can never share a problem.

The human solution H is that worked solution with the calculator annotations removed and the
``#### N`` line rewritten as ``The answer is N.`` - the format the prompt asks for, so SFT on H
teaches the answer format the extractor reads. Grading compares the final number numerically
(exact rational arithmetic: ``1,000`` = ``1000`` = ``1000.0``, ``−3`` = ``-3``).
"""

from __future__ import annotations

import re
from fractions import Fraction

from cotshape.core.errors import InputError
from cotshape.core.records import make_problem
from cotshape.tasks.base import (
    MATH_PLAIN_TEMPLATE,
    VERIFIER_ERROR,
    Problem,
    Task,
    Verdict,
    is_test_key,
    read_hub_rows,
)
from cotshape.tasks.registry import register

#: offline problems drawn when no ``limit`` is given
OFFLINE_SIZES = {"train": 2000, "test": 500}
TEST_FRACTION = 0.2
SEED_STRIDE = 1_000_003
_GSM_SUFFIX = " Give the result as your final answer. Do not include units."

# A number as people write it: optional sign (ASCII or unicode minus), thousands commas,
# decimals, a leading "$".
# A sign counts only when it is not a binary minus ("60-12" ends in 12, not -12).
_NUM = r"(?:(?<![\w)\]}.])[-−–+])?\$?(?:(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?|(?<!\d)\.\d+)"
_NUM_RE = re.compile(_NUM)
_HASH_RE = re.compile(r"####\s*(" + _NUM + r")")
_ANSWER_IS_RE = re.compile(
    r"answer\s*(?:is|:|=)?\s*[:=]?\s*\**\s*\$?\\?\(?\s*(" + _NUM + r")", re.IGNORECASE
)
_BOXED_RE = re.compile(r"\\boxed\s*\{\s*\\?\$?\s*(" + _NUM + r")\s*\\?%?\s*\}")
_CALC_RE = re.compile(r"<<[^<>]*>>")
# Cap on the text searched: a completion is untrusted and regexes must stay linear and bounded.
MAX_COMPLETION_CHARS = 100_000


def parse_number(text: str) -> Fraction | None:
    """The exact value of a plain number string (``-1,234.50``, ``−3``, ``$5``, ``.5``), or None."""
    if not isinstance(text, str) or len(text) > 200:
        return None
    s = text.strip().replace("−", "-").replace("–", "-").replace(" ", "").replace("$", "")
    s = s.rstrip(".")
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if not re.fullmatch(r"[-+]?(\d+(\.\d*)?|\.\d+)", s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def _clean(num: str) -> str:
    s = num.replace("−", "-").replace("–", "-").replace(" ", "").replace("$", "")
    return s


def extract_answer(completion: str) -> str | None:
    """The final number of a completion: the last ``#### N``, else the last "the answer is N",
    else the last ``\\boxed{N}``, else the last number in the text; None when there is none."""
    if not isinstance(completion, str):
        return None
    text = completion[-MAX_COMPLETION_CHARS:]
    for pattern in (_HASH_RE, _ANSWER_IS_RE, _BOXED_RE):
        found = pattern.findall(text)
        if found:
            return _clean(found[-1])
    found = _NUM_RE.findall(text)
    return _clean(found[-1]) if found else None


def human_solution(solution: str) -> str:
    """H as a completion: calculator annotations dropped, ``#### N`` -> ``The answer is N.``"""
    text = _CALC_RE.sub("", solution).rstrip()
    m = re.search(r"\n?\s*####\s*(.+?)\s*$", text)
    if m:
        text = text[: m.start()].rstrip() + f"\nThe answer is {m.group(1).strip()}."
    return text


@register
class GSM8K(Task):
    name = "gsm8k"
    hub_id = "openai/gsm8k"
    hub_config = "main"
    instruction = "Solve step by step. End with 'The answer is N.' where N is the final number."
    eval_max_new_tokens = 2048  # eval_math_gsm8k.py (MATH and GSM8K): MAX_TOKENS = 2048

    def base_prompt(self, problem: Problem) -> str:
        """The authors' zero-shot template; eval_math_gsm8k.py serves MATH and GSM8K alike."""
        return MATH_PLAIN_TEMPLATE.format(problem=problem["question"])

    def paper_verify(self, problem: Problem, completion: str) -> Verdict:
        from cotshape.tasks.math import paper_math_verdict

        if not isinstance(completion, str):
            return Verdict(False, False, None, "completion is not a string")
        return paper_math_verdict(problem["solution"], completion)

    def load_hub(self, split: str, source: str, limit: int | None, seed: int) -> list[Problem]:
        rows = read_hub_rows(source, self.hub_config, split)
        out = []
        for i, row in enumerate(rows[:limit] if limit else rows):
            m = re.search(r"####\s*(.+?)\s*$", row["answer"])
            if not m:
                raise InputError(f"{source} {split} row {i}: answer has no '#### N' line")
            out.append(
                make_problem(
                    id=f"gsm8k-{split}-{i:05d}",
                    task=self.name,
                    question=row["question"].strip(),
                    answer=m.group(1).replace(",", "").strip(),
                    solution=row["answer"].strip(),
                    meta={"source": source},
                )
            )
        return out

    offline_levels = ("easy", "full")
    #: SmolLM2-135M-Instruct's own zero-shot answers to generated easy problems (temperature 0.8),
    #: picked among its correct ones, with the arithmetic slips of two corrected: the few-shot
    #: teacher prompt of the CPU proxy then shows the teacher its own phrasing, not H's.
    teacher_exemplars = (
        {"question": "Ben buys 6 bags of pencils. Each of the bags has 3 pencils. How many pencils does Ben buy?",
         "cot": "Ben buys 6 bags of pencils and each of these bags has 3 pencils. To find out how many pencils Ben "
                "buys, you multiply the number of bags by the number of pencils they have: 6 x 3 = 18 pencils.\n"
                "The answer is 18."},
        {"question": "Emma has 11 marbles. She gives 8 marbles to a friend. How many marbles does Emma have left?",
         "cot": "Emma has 11 marbles, and she gives 8 marbles to a friend, so she has 11 - 8 = 3 marbles left.\n"
                "The answer is 3."},
        {"question": "Eli has 2 jars with 3 apples in each. He also has 7 loose apples. How many apples does Eli "
                     "have in all?",
         "cot": "Let's break it down step by step:\n\nEli has 2 jars with 3 apples in each. This means 2 jars have "
                "2 x 3 = 6 apples.\nHe also has 7 loose apples.\nThe total number of apples is the sum of apples, "
                "which is 6 + 7 = 13.\nThe answer is 13."},
        {"question": "Ben has 6 eggs. He buys 4 baskets with 5 eggs in each, then gives away 14 eggs. How many eggs "
                     "does Ben have now?",
         "cot": "Ben has 6 eggs, and he buys 4 baskets with 5 eggs in each, so he buys 4 x 5 = 20 eggs. Now he has "
                "6 + 20 = 26 eggs. He gives away 14 eggs, so he now has 26 - 14 = 12 eggs left.\n\nThe answer is 12."},
    )

    def load_offline(self, split: str, limit: int | None, seed: int, level: str = "full") -> list[Problem]:
        if level == "easy":
            return self._load_easy(split, limit, seed)
        import reasoning_gym

        want = limit or OFFLINE_SIZES[split]
        # One generator stream per seed shared by both splits; the hash of the question decides
        # the split, so train and test are disjoint whatever sizes are asked for.
        # items are generated lazily; the pool only bounds the search. reasoning-gym seeds item i
        # with seed + i, so seeds are spread far apart to give unrelated streams.
        pool = 64 + 50 * want
        ds = reasoning_gym.create_dataset("gsm_symbolic", size=pool, seed=seed * SEED_STRIDE)
        out: list[Problem] = []
        seen: set[str] = set()
        for idx in range(pool):
            item = ds[idx]
            question = item["question"].replace(_GSM_SUFFIX, "").strip()
            if question in seen or is_test_key(question, TEST_FRACTION) != (split == "test"):
                continue
            seen.add(question)
            cot = item["metadata"]["answer_cot"].strip()
            out.append(
                make_problem(
                    id=f"gsm8k-{split}-{len(out):05d}",
                    task=self.name,
                    question=question,
                    answer=str(item["answer"]).strip(),
                    solution=cot,
                    meta={"source": "reasoning_gym/gsm_symbolic", "seed": seed, "index": idx},
                )
            )
            if len(out) >= want:
                break
        if limit and len(out) < limit:
            raise InputError(f"gsm8k offline: only {len(out)} distinct {split} problems for limit={limit}")
        return out

    def _load_easy(self, split: str, limit: int | None, seed: int) -> list[Problem]:
        """The CPU proxy: one- and two-step word problems from :mod:`cotshape.tasks.wordgen`,
        split into train/test by a hash of the question like the full offline source."""
        from cotshape.tasks import wordgen

        want = limit or OFFLINE_SIZES[split]
        out: list[Problem] = []
        seen: set[str] = set()
        for idx in range(64 + 50 * want):
            item = wordgen.generate(idx, seed)
            question = str(item["question"])
            if question in seen or self.is_exemplar(question) or is_test_key(question, TEST_FRACTION) != (split == "test"):
                continue
            seen.add(question)
            out.append(make_problem(
                id=f"gsm8k-{split}-{len(out):05d}", task=self.name, question=question, answer=str(item["answer"]),
                solution=str(item["solution"]),
                meta={"source": "cotshape/wordgen", "level": "easy", "family": item["family"],
                      "steps": item["steps"], "seed": seed, "index": idx},
            ))
            if len(out) >= want:
                break
        if limit and len(out) < limit:
            raise InputError(f"gsm8k offline (easy): only {len(out)} distinct {split} problems for limit={limit}")
        return out

    def human_completion(self, problem: Problem) -> str:
        return human_solution(problem["solution"])

    def extract_answer(self, completion: str) -> str | None:
        return extract_answer(completion)

    def check(self, problem: Problem, extracted: str, completion: str) -> Verdict:
        pred, gold = parse_number(extracted), parse_number(problem["answer"])
        if gold is None:
            return Verdict(False, True, extracted, f"{VERIFIER_ERROR}: gold answer {problem['answer']!r} is not a number")
        if pred is None:
            return Verdict(False, False, extracted, f"{extracted!r} is not a number")
        if pred == gold:
            return Verdict(True, True, extracted, "equal to the gold answer")
        return Verdict(False, True, extracted, f"{extracted} != gold {problem['answer']}")
