"""base.backend drives every generating stage (sample, evaluate, paraphrase, model-written flawed
CoTs in degrade), and a LoRA student reaches vLLM as a merged model folder.

The stages run for real on the tiny model (transformers backend) and record the backend they
generated with; with ``base.backend: vllm`` on a machine without vLLM each of them stops with
the missing extra named, which shows it read the one key (no stage falls back to transformers).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
NO_VLLM = "vllm is not installed (extra `gpu`, CUDA machines only): the vLLM path cannot run here"


def make_lora_sft_dir(base_dir: Path, out: Path) -> Path:
    """An SFT output folder as train_sft writes it for method lora: adapter, tokenizer, marker.
    The adapter's B matrices are random (not zero), so merging it changes the model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cotshape.sft.checkpoints import MARKER

    model = AutoModelForCausalLM.from_pretrained(base_dir)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    peft.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    (out / MARKER).write_text(json.dumps({"method": "lora", "base_model": str(base_dir), "merged": False}))
    return out


@pytest.fixture(scope="module")
def stage_inputs(tiny_model_dir, tmp_path_factory):
    """Problems, a good set and a LoRA SFT folder for the four generating stages."""
    from cotshape.core.records import training_record, write_jsonl
    from cotshape.tasks import get_task

    d = tmp_path_factory.mktemp("stage-backends")
    task = get_task("gsm8k")
    train = task.load("train", source="offline", limit=2, seed=0, level="easy")
    write_jsonl(d / "train.jsonl", train)
    write_jsonl(d / "test.jsonl", task.load("test", source="offline", limit=2, seed=0, level="easy"))
    write_jsonl(d / "H.jsonl", [training_record("gsm8k", "H", p["id"], task.chat_messages(p), task.human_completion(p))
                                for p in train])
    make_lora_sft_dir(Path(tiny_model_dir), d / "sft-lora")
    return d


def stage_commands(d: Path, model: str, out: Path) -> dict[str, list[str]]:
    return {
        "sample": ["--task", "gsm8k", "--shard", "0", "--problems", f"{d}/train.jsonl", "--model", model,
                   "--out", f"{out}/samples.jsonl"],
        "evaluate": ["--task", "gsm8k", "--set", "H", "--problems", f"{d}/test.jsonl", "--model", f"{d}/sft-lora",
                     "--out", f"{out}/eval.jsonl", "--metrics", f"{out}/eval.json"],
        "paraphrase": ["--task", "gsm8k", "--problems", f"{d}/train.jsonl", "--student", model, "--teacher", model,
                       "--out", f"{out}/P.jsonl", "--metrics", f"{out}/paraphrase.json"],
        "degrade": ["--task", "gsm8k", "--problems", f"{d}/train.jsonl", "--good", f"{d}/H.jsonl", "--teacher", model,
                    "--mix-dir", f"{out}/mix", "--step-dir", f"{out}/step", "--metrics", f"{out}/degrade.json"],
    }


def run_stage(stage: str, args: list[str], params_file: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, COTSHAPE_PARAMS=str(params_file), HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def write_params(path: Path, model: str, backend: str) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["base"].update(device="cpu", dtype="float32", teacher=model, student=model, backend=backend)
    params["sample"].update(k=1, max_new_tokens=4, batch_size=4, shots=0)
    params["evaluate"].update(max_new_tokens=4, batch_size=4)
    params["paraphrase"].update(max_new_tokens=4, retries=0)
    params["degrade"].update(flawed_source="model", flawed_fractions=[1.0], step_k=[1])
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.slow
def test_every_generating_stage_records_the_configured_backend(stage_inputs, tiny_model_dir, tmp_path):
    from cotshape.core.records import read_jsonl

    pfile = write_params(tmp_path / "params.yaml", str(tiny_model_dir), "transformers")
    out = tmp_path / "out"
    for stage, args in stage_commands(stage_inputs, str(tiny_model_dir), out).items():
        proc = run_stage(stage, args, pfile)
        assert proc.returncode == 0, f"{stage}: {proc.stderr[-3000:]}"
    assert {r["backend"] for r in read_jsonl(out / "samples.jsonl")} == {"transformers"}
    for name in ("eval", "paraphrase", "degrade"):
        assert json.loads((out / f"{name}.json").read_text())["backend"] == "transformers", name
    assert json.loads((out / "eval.json").read_text())["n"] == 2  # the LoRA student was evaluated


@pytest.mark.skipif(HAS_VLLM, reason="vllm is installed here: the stages would really load it")
def test_every_generating_stage_reads_base_backend(stage_inputs, tiny_model_dir, tmp_path):
    """With base.backend: vllm and no vLLM, each generating stage stops with the extra named:
    none of them generates with another backend than the configured one."""
    pfile = write_params(tmp_path / "params.yaml", str(tiny_model_dir), "vllm")
    out = tmp_path / "out"
    for stage, args in stage_commands(stage_inputs, str(tiny_model_dir), out).items():
        proc = run_stage(stage, args, pfile)
        assert proc.returncode == 2, f"{stage}: {proc.stderr[-3000:]}"
        assert "the vllm backend needs vLLM on a CUDA machine: pip install 'cotshape[gpu]'" in proc.stderr, stage
    assert not (out / "samples.jsonl").exists() and not (out / "eval.json").exists()


def test_old_sample_backend_key_is_refused_with_the_move_named(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["sample"]["backend"] = "vllm"
    pfile = tmp_path / "params.yaml"
    pfile.write_text(yaml.safe_dump(params))
    proc = run_stage("sample", ["--task", "gsm8k", "--shard", "0", "--problems", "x", "--model", "m", "--out",
                                str(tmp_path / "o.jsonl")], pfile)
    assert proc.returncode == 2
    assert f"error: {pfile}: sample.backend: moved to base.backend" in proc.stderr


def test_lora_student_merged_into_a_folder_for_vllm(stage_inputs, tiny_model_dir):
    """What vLLM gets for a LoRA student: a plain model folder with the adapter merged, which
    computes what the transformers path (merged in memory) computes."""
    import torch
    from transformers import AutoModelForCausalLM

    from cotshape.generation.vllm_backend import SFT_MARKER, merged_lora_folder
    from cotshape.sft.checkpoints import MARKER, load_trained

    assert SFT_MARKER == MARKER
    sft = stage_inputs / "sft-lora"
    tmp = merged_lora_folder(sft, dtype="float32")
    folder = Path(tmp.name)
    assert (folder / "config.json").exists() and (folder / "tokenizer_config.json").exists()
    assert not (folder / "adapter_config.json").exists()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(folder).eval()(ids).logits
        in_memory = load_trained(sft, device="cpu", dtype="float32")(ids).logits
        base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()(ids).logits
    assert torch.allclose(merged, in_memory, atol=1e-5)
    assert not torch.allclose(merged, base, atol=1e-3)  # the adapter is in it
    tmp.cleanup()
    assert not folder.exists()
    # a model folder or a full fine-tune is loaded as it is
    assert merged_lora_folder(tiny_model_dir) is None


@pytest.mark.skipif(not HAS_VLLM, reason=NO_VLLM)
def test_vllm_backend_generates_from_a_lora_student(stage_inputs, tmp_path, monkeypatch):  # pragma: no cover - GPU only
    from cotshape.core.config import validate_params
    from cotshape.generation.base import SamplingParams
    from cotshape.pipeline.stage import load_backend

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["base"].update(backend="vllm", device="cuda", dtype="float32")
    p = validate_params(raw)
    monkeypatch.setenv("COTSHAPE_TMPDIR", str(tmp_path))  # where merged_lora_folder merges the adapter
    backend = load_backend(p, stage_inputs / "sft-lora", 4)
    assert backend.name == "vllm"
    [merged] = tmp_path.glob("cotshape-merged-*")
    [[c]] = backend.generate(["Hello"], SamplingParams(max_new_tokens=4))
    assert c.num_tokens >= 1
    backend.close()
    assert not merged.exists()


def test_generate_with_progress_shows_rate_and_eta_and_returns_what_generate_returns(tiny_model_dir, capsys):
    """The bar of paraphrase and model-written flawed CoTs: prompts done, rate, ETA, tokens/s."""
    from cotshape.generation import get_backend
    from cotshape.generation.base import SamplingParams
    from cotshape.pipeline.stage import generate_with_progress

    backend = get_backend("transformers", tiny_model_dir, device="cpu", dtype="float32", batch_size=2)
    prompts = [[{"role": "user", "content": f"Count to {i}."}] for i in range(3)]
    sp = SamplingParams(n=2, temperature=1.0, max_new_tokens=4)
    got = generate_with_progress(backend, prompts, sp, "paraphrase gsm8k", seeds=[1, 2, 3])
    want = backend.generate(prompts, sp, seeds=[1, 2, 3])
    assert [[c.text for c in cs] for cs in got] == [[c.text for c in cs] for cs in want]
    err = capsys.readouterr().err
    assert "paraphrase gsm8k" in err and "3/3" in err and ("prompt/s" in err or "s/prompt" in err)
    assert "tok_s=" in err and "<" in err  # tqdm's "elapsed<remaining" (the ETA)
