"""Closeness (cotshape.sft.closeness.completion_loss) on literal fixtures and the tiny model."""

from __future__ import annotations

import math
import random

import pytest

from cotshape.sft.closeness import completion_loss
from cotshape.sft.params import SFTParams
from cotshape.sft.train import train_sft

PROMPTS = [
    "What is 2 + 3?",
    "Tom has 4 apples and eats one. How many are left?",
    "A box holds 6 eggs. How many eggs are in 7 boxes?",
    "Sara reads 12 pages a day. How many pages does she read in 5 days?",
]
HUMAN = [
    "2 + 3 = 5.\n#### 5",
    "He had 4 and ate 1, so 4 - 1 = 3 apples are left.\n#### 3",
    "Each box holds 6 eggs, so 7 boxes hold 7 * 6 = 42 eggs.\n#### 42",
    "She reads 12 pages each day for 5 days: 12 * 5 = 60 pages.\n#### 60",
]


def _records(completions):
    return [{"id": f"r{i}", "problem_id": f"p{i}", "task": "gsm8k", "set": "X",
             "prompt": [{"role": "user", "content": p}], "completion": c}
            for i, (p, c) in enumerate(zip(PROMPTS, completions, strict=True))]


def _greedy(model_dir, n_tokens=24, until_eos=False):
    """The model's own greedy continuation of each prompt (its chat template): exactly
    ``n_tokens`` tokens, or up to ``n_tokens`` stopping at its end of turn (``until_eos``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    outs = []
    for p in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)
        with torch.no_grad():
            gen = model.generate(**ids, do_sample=False, max_new_tokens=n_tokens,
                                 min_new_tokens=None if until_eos else n_tokens)
        outs.append(tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    return outs


def _shuffled_words(texts, seed=0):
    rng = random.Random(seed)
    out = []
    for t in texts:
        words = t.split()
        rng.shuffle(words)
        out.append(" ".join(words))
    return out


def test_own_greedy_output_is_closer_than_shuffled_words(tiny_model_dir):
    own = completion_loss(tiny_model_dir, _records(_greedy(tiny_model_dir)), batch_size=2)
    shuffled = completion_loss(tiny_model_dir, _records(_shuffled_words(HUMAN)), batch_size=2)
    assert own["mean_loss"] < shuffled["mean_loss"]
    assert own["n_examples"] == shuffled["n_examples"] == 4


def test_result_fields_and_perplexity(tiny_model_dir):
    res = completion_loss(tiny_model_dir, _records(HUMAN), batch_size=3)
    assert set(res) == {"mean_loss", "perplexity", "n_tokens", "n_examples"}
    assert res["perplexity"] == pytest.approx(math.exp(res["mean_loss"]))
    assert res["n_examples"] == 4 and res["n_tokens"] > 4 * 5


def test_batching_does_not_change_the_loss(tiny_model_dir):
    """Padding is masked out: one example per batch and all in one padded batch agree."""
    one = completion_loss(tiny_model_dir, _records(HUMAN), batch_size=1)
    four = completion_loss(tiny_model_dir, _records(HUMAN), batch_size=4)
    assert one["n_tokens"] == four["n_tokens"]
    assert one["mean_loss"] == pytest.approx(four["mean_loss"], rel=1e-5)


def test_equals_sft_first_step_loss(tiny_model_dir, tmp_path):
    """Same masking and loss as SFT: the loss SFTTrainer logs at step 1 (one batch holding the
    whole set, before any update) is the base model's completion loss on the set."""
    records = _records(HUMAN)
    params = SFTParams(method="full", batch_size=4, max_steps=1, learning_rate=1e-6, warmup_ratio=0.0,
                       dtype="float32", max_length=512)
    metrics = train_sft(tiny_model_dir, records, tmp_path / "ckpt", params)
    base = completion_loss(tiny_model_dir, records, batch_size=4, max_length=512)
    assert metrics["first_loss"] == pytest.approx(base["mean_loss"], rel=1e-4)


def test_trained_checkpoint_folder_is_accepted(tiny_model_dir, tmp_path):
    """A train_sft output (here a LoRA adapter) loads through load_trained."""
    records = _records(HUMAN)
    params = SFTParams(method="lora", batch_size=4, epochs=3, learning_rate=5e-2, warmup_ratio=0.0,
                       dtype="float32", lora_r=4, lora_alpha=8)
    train_sft(tiny_model_dir, records, tmp_path / "lora", params)
    before = completion_loss(tiny_model_dir, records)
    after = completion_loss(tmp_path / "lora", records)
    assert after["mean_loss"] < before["mean_loss"]  # trained on exactly this set


def test_empty_set_and_bad_batch_size_are_errors(tiny_model_dir):
    with pytest.raises(ValueError, match="empty"):
        completion_loss(tiny_model_dir, [])
    with pytest.raises(ValueError, match="closeness.batch_size"):
        completion_loss(tiny_model_dir, _records(HUMAN), batch_size=0)


@pytest.mark.slow
def test_real_student_own_greedy_output_is_closer_than_shuffled_words(tmp_path_factory):
    """The paper's premise on the real offline student: SmolLM2's own greedy CoTs are closer to
    it than the same kind of text with its words shuffled (and than human solutions)."""
    from cotshape.core.models import materialize

    model_dir = materialize("smollm2-135m-instruct", tmp_path_factory.mktemp("smollm2") / "model")
    # until its own end of turn: a CoT cut mid-sentence would be scored on an <|im_end|> the
    # model never puts there
    own = completion_loss(model_dir, _records(_greedy(model_dir, n_tokens=160, until_eos=True)), batch_size=4)
    human = completion_loss(model_dir, _records(HUMAN), batch_size=4)
    shuffled = completion_loss(model_dir, _records(_shuffled_words(HUMAN)), batch_size=4)
    assert own["mean_loss"] < human["mean_loss"] < shuffled["mean_loss"]
