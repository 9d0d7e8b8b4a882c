"""base.prompt_format (chat | plain), the authors' plain templates and stop strings, per-task
evaluation lengths, the paper scorers next to the strict ones, and paraphrase's auto length.

The "same string" tests run the real code of each stage (SFT tokenization, closeness scoring,
evaluation through the transformers backend) on the tiny random Llama, once with its ChatML chat
template and once re-saved as a base model: no chat template, and a tokenizer that adds BOS.
"""

from __future__ import annotations

import shutil

import pytest

from cotshape.core.errors import InputError
from cotshape.core.records import make_problem, training_record
from cotshape.tasks import get_task
from cotshape.tasks.base import MATH_PLAIN_TEMPLATE, special_prefix, student_prompt

GSM = make_problem("g1", "gsm8k", "Tom has 3 apples and buys 4 more. How many apples?", "7", "3 + 4 = 7\n#### 7")
MATH = make_problem("m1", "math", "Compute $1/2 + 0$.", "\\frac{1}{2}", "It is $\\boxed{\\frac{1}{2}}$.")
CD = make_problem("c1", "countdown", "Using the numbers [1, 2, 3], make 9.", "(1+2)*3", "(1+2)*3 = 9",
                  meta={"numbers": [1, 2, 3], "target": 9})
MB = make_problem("b1", "mbpp", "Write a function add(a, b) that returns a + b.", "", "```python\ndef add(a, b):\n    return a + b\n```",
                  tests=["assert add(1, 2) == 3", "assert add(-1, 1) == 0"])


@pytest.fixture(scope="module")
def base_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model re-saved as a *base* model: no chat template, BOS added to every text."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tiny-base") / "model"
    shutil.copytree(tiny_model_dir, out)
    for f in out.glob("*.jinja"):
        f.unlink()
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = None
    tok.add_bos_token = True
    tok.save_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template is None
    return out


# ---- the authors' templates and stop strings ------------------------------------------------
def test_plain_templates_are_the_authors():
    assert get_task("math").base_prompt(MATH) == MATH_PLAIN_TEMPLATE.format(problem=MATH["question"])
    assert get_task("gsm8k").base_prompt(GSM).startswith("You are a math expert. I am going to give you a math Problem")
    assert get_task("gsm8k").base_prompt(GSM).endswith(f"\n\nProblem:\n{GSM['question']}\n\nSolution:")
    assert get_task("countdown").base_prompt(CD).endswith(
        "<answer> (1 + 2) / 3 </answer>.\nProblem:\nUsing the numbers [1, 2, 3], create an equation that equals 9. "
        "You can use basic arithmetic operations (+, -, *, /) and each number can only be used once. "
        "Do not use any other operations or numbers.\n\nSolution:")
    mbpp = get_task("mbpp").base_prompt(MB)
    assert mbpp.startswith("You are an expert Python programmer.\n")
    assert mbpp.endswith(f"\nProblem:\n{MB['question']}\n\nYour code should satisfy the following assertion:\n"
                         "assert add(1, 2) == 3\n\nSolution:")


def test_stop_strings_apply_to_plain_prompts_only():
    assert get_task("gsm8k").stop_strings("plain") == ["Problem:"]
    assert get_task("gsm8k").stop_strings("chat") == []
    assert "\ndef test" in get_task("mbpp").stop_strings("plain")


def test_eval_tokens_auto_resolve_per_task():
    from cotshape.evaluation.evaluate import resolve_max_new_tokens

    want = {"math": 2048, "gsm8k": 2048, "countdown": 4096, "mbpp": 1024}
    assert {t: resolve_max_new_tokens(get_task(t), "auto") for t in want} == want
    assert resolve_max_new_tokens(get_task("countdown"), 128) == 128
    with pytest.raises(ValueError, match="evaluate.max_new_tokens"):
        resolve_max_new_tokens(get_task("gsm8k"), "long")


def test_params_accept_auto_and_the_new_choices():
    from cotshape.core.config import ParamsError, validate_params

    p = validate_params({"base": {"prompt_format": "plain"}, "evaluate": {"max_new_tokens": "auto", "scoring": "paper"},
                         "paraphrase": {"max_new_tokens": "auto"}})
    assert (p.base.prompt_format, p.evaluate.max_new_tokens, p.evaluate.scoring, p.paraphrase.max_new_tokens) == \
        ("plain", "auto", "paper", "auto")
    assert validate_params({}).base.prompt_format == "plain" and validate_params({}).evaluate.scoring == "strict"
    with pytest.raises(ParamsError, match=r"evaluate.max_new_tokens: must be an integer or auto, got 'long'"):
        validate_params({"evaluate": {"max_new_tokens": "long"}})
    with pytest.raises(ParamsError, match=r"paraphrase.max_new_tokens: must be >= 1"):
        validate_params({"paraphrase": {"max_new_tokens": 0}})
    with pytest.raises(ParamsError, match=r"base.prompt_format: must be one of chat, plain"):
        validate_params({"base": {"prompt_format": "raw"}})


# ---- one prompt string for SFT, closeness and evaluation ------------------------------------
def _record(problem):
    task = get_task(problem["task"])
    return training_record(task.name, "H", problem["id"], task.chat_messages(problem), task.human_completion(problem))


@pytest.mark.parametrize("which", ["chat_template", "no_chat_template"])
def test_plain_prompt_is_the_same_string_in_sft_closeness_and_evaluation(which, tiny_model_dir, base_model_dir):
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotshape.evaluation.evaluate import evaluate
    from cotshape.generation import get_backend
    from cotshape.sft.closeness import completion_loss
    from cotshape.sft.tokenize import record_prompts, tokenize_records

    model_dir = tiny_model_dir if which == "chat_template" else base_model_dir
    tok = AutoTokenizer.from_pretrained(model_dir)
    task, problems = get_task("gsm8k"), {GSM["id"]: GSM}
    text = student_prompt(task, GSM, "plain", tok)
    assert text.endswith(task.base_prompt(GSM))
    if which == "no_chat_template":
        assert text == "<|im_start|>" + task.base_prompt(GSM)  # this tokenizer's BOS, as text
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # the ids vLLM/TRL get from the bare template (special tokens added by the tokenizer)
    assert ids == tok(task.base_prompt(GSM))["input_ids"]

    # SFT: the record's prompt is rebuilt from its problem; its prompt tokens are those ids
    rec = _record(GSM)
    assert record_prompts(tok, [rec], "plain", task, problems) == [text]
    [ex] = tokenize_records(tok, [rec], None, record_prompts(tok, [rec], "plain", task, problems))
    n_prompt = ex["completion_mask"].index(1)
    assert ex["input_ids"][:n_prompt] == ids
    assert ex["input_ids"][-1] == tok.eos_token_id
    assert tok.decode(ex["input_ids"][n_prompt:-1]) == "\n" + task.human_completion(GSM)

    # closeness scores the completion after exactly that prompt: its loss is the model's own
    # NLL of the completion tokens given the prompt ids
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    got = completion_loss(model, [rec], tokenizer=tok, max_length=None, prompt_format="plain", task=task,
                          problems=problems)
    with torch.no_grad():
        logits = model(torch.tensor([ex["input_ids"]])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ex["input_ids"][1:])[:, None])[:, 0]
    want = -logp[n_prompt - 1:].mean().item()
    assert got["n_tokens"] == len(ex["input_ids"]) - n_prompt
    assert math.isclose(got["mean_loss"], want, rel_tol=1e-4)

    # evaluation decodes from the same text, through the backend's own encoding
    backend = get_backend("transformers", model_dir, device="cpu", dtype="float32", batch_size=2)
    [out], metrics = evaluate(task, [GSM], backend, max_new_tokens=4, progress=False, prompt_format="plain")
    assert out["prompt"] == text
    assert backend.encode(out["prompt"]) == ids
    assert (metrics["prompt_format"], metrics["scoring"], metrics["max_new_tokens"]) == ("plain", "strict", 4)


def test_a_tokenizer_without_chat_template_is_refused_with_chat_naming_the_key(base_model_dir):
    from transformers import AutoTokenizer

    from cotshape.generation.base import Backend
    from cotshape.sft.tokenize import tokenize_records

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    task = get_task("gsm8k")
    with pytest.raises(InputError, match=r"no chat template.*base.prompt_format: plain"):
        student_prompt(task, GSM, "chat", tok)
    with pytest.raises(InputError, match=r"base.prompt_format: plain"):
        tokenize_records(tok, [_record(GSM)], None)
    backend = Backend()
    backend.tokenizer = tok
    with pytest.raises(InputError, match=r"base.prompt_format: plain"):
        backend.encode(task.chat_messages(GSM))


def test_chat_prompt_is_the_rendered_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = get_task("gsm8k")
    text = student_prompt(task, GSM, "chat", tok)
    assert text == tok.apply_chat_template(task.chat_messages(GSM), add_generation_prompt=True, tokenize=False)
    assert special_prefix(tok) == ""  # SmolLM2's tokenizer adds nothing before a text
    with pytest.raises(InputError, match="base.prompt_format"):
        student_prompt(task, GSM, "raw", tok)


def test_special_prefix_is_the_bos_the_tokenizer_adds(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert special_prefix(tok) == "" and special_prefix(None) == ""
    tok.add_bos_token = True
    assert special_prefix(tok) == "<|im_start|>"
    tok.add_eos_token = True  # a tokenizer that also appends EOS keeps only the leading BOS
    assert tok("a")["input_ids"][-1] == tok.eos_token_id and special_prefix(tok) == "<|im_start|>"


def test_plain_sft_needs_the_problems():
    from cotshape.sft.tokenize import prompt_format_kwargs, record_prompts

    with pytest.raises(InputError, match=r"--problems"):
        prompt_format_kwargs("plain", "gsm8k", None)
    assert prompt_format_kwargs("chat", "gsm8k", None) == {"prompt_format": "chat"}
    with pytest.raises(InputError, match=r"problem_id 'g1' is not among"):
        record_prompts(None, [_record(GSM)], "plain", get_task("gsm8k"), {})


def test_transformers_backend_stops_at_a_plain_stop_string(tiny_model_dir):
    from cotshape.generation import get_backend
    from cotshape.generation.base import SamplingParams

    backend = get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", batch_size=2)
    prompt = student_prompt(get_task("gsm8k"), GSM, "plain", backend.tokenizer)
    [[free]] = backend.generate([prompt], SamplingParams(max_new_tokens=24))
    assert len(free.text) > 4
    stop = free.text[2:5]  # a string the greedy continuation is known to contain
    [[cut]] = backend.generate([prompt], SamplingParams(max_new_tokens=24, stop=[stop]))
    assert cut.finish_reason == "stop" and stop not in cut.text and free.text.startswith(cut.text)


# ---- paper scorers where they differ from the strict ones -------------------------------------
@pytest.mark.parametrize(("problem", "completion", "strict", "paper"), [
    # GSM8K: strict reads "The answer is N"; math-verify on the full text reads the last number
    (GSM, "The answer is 7. To double-check: 7 + 1 = 8", (True, True), (False, True)),
    # MATH: strict needs a \boxed{} or "the answer is"; math-verify finds the last expression
    (MATH, "So x equals $\\frac{1}{2}$", (False, False), (True, True)),
    (MATH, "The result is $0.5$.", (False, False), (True, True)),
    # Countdown: the paper reads the <answer> of the last line only, and cannot evaluate "= 9"
    (CD, "<answer>(1+2)*3</answer>\nThat works.", (True, True), (False, False)),
    (CD, "<answer>(1 + 2) * 3 = 9</answer>", (True, True), (False, True)),
    (CD, "I think\n<answer>3*(2+1)</answer>", (True, True), (True, True)),
    # MBPP: the paper strips the fences and runs the whole text, prose included
    (MB, "```python\ndef add(a, b):\n    return a + b\n```\nThis adds the numbers.", (True, True), (False, False)),
    (MB, "def add(a, b):\n    return a + b", (True, True), (True, True)),
])
def test_paper_scorers_on_literal_completions(problem, completion, strict, paper):
    task = get_task(problem["task"])
    s, p = task.verify(problem, completion), task.paper_verify(problem, completion)
    assert (s.correct, s.parsed) == strict, s
    assert (p.correct, p.parsed) == paper, p


def test_paper_scorers_never_raise():
    for problem in (GSM, MATH, CD, MB):
        task = get_task(problem["task"])
        for junk in ("", "<answer>__import__('os')</answer>", "<answer>1/0 + 2 + 3</answer>", "\\boxed{" * 50, None):
            v = task.paper_verify(problem, junk)
            assert v.correct is False


def test_evaluate_records_paper_scoring_in_its_metrics():
    from cotshape.evaluation.evaluate import evaluate
    from cotshape.generation.base import Backend, Completion

    class Replay(Backend):
        name = "replay"

        def generate(self, prompts, params, progress=None, seeds=None):
            self.params = params
            return [[Completion("<answer>(1+2)*3</answer>\nThat works.", 9, "stop")] for _ in prompts]

    backend = Replay()
    [rec], m = evaluate(get_task("countdown"), [CD], backend, max_new_tokens="auto", progress=False,
                        prompt_format="plain", scoring="paper")
    assert (m["scoring"], m["prompt_format"], m["max_new_tokens"]) == ("paper", "plain", 4096)
    assert backend.params.stop == ["Problem:"] and backend.params.max_new_tokens == 4096
    assert rec["prompt"] == get_task("countdown").base_prompt(CD)  # no tokenizer: no BOS to add
    assert (rec["correct"], rec["parsed"], m["n_parsed"]) == (False, False, 0)
    [rec], m = evaluate(get_task("countdown"), [CD], backend, max_new_tokens=16, progress=False)
    assert (rec["correct"], m["scoring"], m["prompt_format"]) == (True, "strict", "chat")


# ---- paraphrase length ----------------------------------------------------------------------
def test_paraphrase_budget_follows_the_solution():
    from cotshape.data.paraphrase import paraphrase_budget

    assert [paraphrase_budget(n) for n in (0, 10, 64, 65, 300, 1500, 5000)] == [1024, 1024, 1024, 1024, 1024, 4096, 4096]
    assert paraphrase_budget(513) == 2048  # 2 x 513, rounded up to a power of two


def test_paraphrase_auto_length_groups_by_budget_and_reports_the_fallback(tiny_model_dir):
    from transformers import AutoTokenizer

    from cotshape.data.paraphrase import paraphrase_budget, paraphrase_set

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    task = get_task("gsm8k")
    long_sol = " ".join(f"step {i}: {i} + 1 = {i + 1}." for i in range(60)) + "\n#### 7"
    short = make_problem("s", "gsm8k", "What is 3 + 4?", "7", "3 + 4 = 7\n#### 7")
    long = make_problem("l", "gsm8k", "What is 3 + 4, slowly?", "7", long_sol)
    n_long = len(tok(task.human_completion(long), add_special_tokens=False)["input_ids"])
    assert paraphrase_budget(n_long) > 1024
    calls = []

    def generate(prompts, seeds, max_new_tokens):
        calls.append((len(prompts), max_new_tokens))
        # the short problem is paraphrased; the long one comes back cut (no answer)
        return ["Three plus four is 7. The answer is 7." if "slowly" not in p[0]["content"] else "step 0: 0 + 1"
                for p in prompts]

    recs, m = paraphrase_set(task, [short, long], generate, retries=0, tokenizer=tok, max_new_tokens="auto")
    assert sorted(calls) == [(1, 1024), (1, paraphrase_budget(n_long))]
    assert [r["paraphrased"] for r in recs] == [True, False]
    assert m["fallback_share"] == 0.5 and m["max_new_tokens"] == "auto"
    assert (m["budget_min"], m["budget_max"]) == (1024, paraphrase_budget(n_long))


def test_student_paraphrases_in_plain_text(base_model_dir):
    from transformers import AutoTokenizer

    from cotshape.data.paraphrase import paraphrase_prompt

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    text = paraphrase_prompt(get_task("gsm8k"), GSM, "plain", tok)
    assert text.startswith("<|im_start|>Rewrite the correct solution") and text.endswith("Rewritten solution:")
    assert GSM["question"] in text and get_task("gsm8k").human_completion(GSM) in text
    assert paraphrase_prompt(get_task("gsm8k"), GSM, "chat")[0]["role"] == "user"


def test_plain_sft_trains_a_base_model_without_chat_template(base_model_dir, tmp_path):
    from cotshape.sft.checkpoints import MARKER
    from cotshape.sft.params import SFTParams
    from cotshape.sft.train import train_sft

    task = get_task("gsm8k")
    second = make_problem("g2", "gsm8k", "A box holds 6 eggs. How many eggs in 2 boxes?", "12", "6 * 2 = 12\n#### 12")
    records = [_record(GSM), _record(second)]
    params = SFTParams(method="full", epochs=1, learning_rate=1e-3, batch_size=2, warmup_ratio=0.0, dtype="float32", seed=0)
    with pytest.raises(InputError, match="base.prompt_format: plain"):
        train_sft(base_model_dir, records, tmp_path / "chat", params)
    m = train_sft(base_model_dir, records, tmp_path / "plain", params, prompt_format="plain", task=task,
                  problems={GSM["id"]: GSM, second["id"]: second})
    assert m["examples"] == 2 and m["steps"] == 1 and (tmp_path / "plain" / MARKER).exists()
