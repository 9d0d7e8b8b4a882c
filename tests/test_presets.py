"""Presets: each validates, applies to the documented params, and its `dvc exp run -S` form
gives the same params.yaml as `preset apply` (checked with dvc's own override code)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from cotshape.core.config import ParamsError, load_params, validate_params
from cotshape.pipeline import presets as P

ROOT = Path(__file__).resolve().parent.parent
PARAMS = ROOT / "params.yaml"
STUDENTS = {
    "paper-gemma-2-2b": "google/gemma-2-2b",
    "paper-gemma-2-9b": "google/gemma-2-9b",
    "paper-llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "paper-qwen2.5-1.5b": "Qwen/Qwen2.5-1.5B",
}


@pytest.fixture()
def params() -> dict:
    return yaml.safe_load(PARAMS.read_text())


def test_list_presets_names_one_per_paper_student():
    assert P.list_presets() == sorted(STUDENTS)


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_every_preset_validates_and_resolves_to_the_paper_setup(name, params):
    merged = P.apply_preset(name, params)
    p = validate_params(merged)
    assert p.base.student == STUDENTS[name]
    assert p.base.teacher == "google/gemma-2-27b-it"
    assert p.base.tasks == ["math", "gsm8k", "countdown", "mbpp"]
    assert p.base.seed == 42
    assert p.prepare.source == "hub"
    assert p.base.backend == "vllm"
    assert p.sample.tensor_parallel_size >= 1
    s = p.sft
    assert (s.method, s.learning_rate, s.epochs, s.batch_size) == ("full", 1e-6, 10, 4)
    # the authors' 4 x 16 = 64 sequences per optimizer step, whatever the process count
    assert merged["sft"]["grad_accum"] == "auto" and s.effective_batch_size == 64
    assert s.sequences_per_step == s.batch_size * s.grad_accum * s.num_processes == 64
    assert s.grad_accum == 64 // (4 * s.num_processes) and s.num_processes > 1
    assert s.precision == "bf16" and s.save_steps == [100, 200]  # [sft.py] bf16 weights; README: checkpoint-100, -200
    assert (s.max_length, s.warmup_ratio, s.weight_decay, s.dtype) == (1024, 0.1, 0.05, "bfloat16")
    assert s.launcher in ("fsdp", "deepspeed")
    assert (ROOT / "configs" / "accelerate" / f"{s.launcher}.yaml").exists()


def test_preset_leaves_keys_it_does_not_set_at_their_params_value(params):
    merged = P.apply_preset("paper-gemma-2-2b", params)
    assert merged["sample"]["top_p"] == params["sample"]["top_p"]
    assert merged["tracking"] == params["tracking"]


def test_short_name_finds_the_paper_preset():
    assert P.preset_path("gemma-2-9b").name == "paper-gemma-2-9b.yaml"


def test_unknown_preset_suggests_close_names():
    with pytest.raises(P.PresetError, match=r"unknown preset 'gema-2-2b'; did you mean 'paper-gemma-2-2b'"):
        P.load_preset("gema-2-2b")


def test_overrides_apply_after_the_preset_as_yaml_values(params):
    merged = P.apply_preset("paper-qwen2.5-1.5b", params, [
        "base.teacher=google/gemma-2-9b-it", "prepare.train_size=500", "base.tasks=[gsm8k]",
        "sft.learning_rate=2e-6", "sft.gradient_checkpointing=false"])
    assert merged["base"]["teacher"] == "google/gemma-2-9b-it"
    assert merged["prepare"]["train_size"] == 500
    assert merged["base"]["tasks"] == ["gsm8k"]
    assert merged["sft"]["learning_rate"] == 2e-6  # a float, though PyYAML alone reads "2e-6" as text
    assert merged["sft"]["gradient_checkpointing"] is False


def test_unknown_override_key_is_an_error_naming_the_closest_key(params):
    with pytest.raises(P.PresetError, match=r"--set sft.lerning_rate=1e-5: unknown key 'sft.lerning_rate' \(did you mean 'sft.learning_rate'"):
        P.apply_preset("paper-gemma-2-2b", params, ["sft.lerning_rate=1e-5"])


def test_override_without_equals_sign_is_an_error(params):
    with pytest.raises(P.PresetError, match="expected KEY.SUBKEY=VALUE"):
        P.apply_preset("paper-gemma-2-2b", params, ["sft.learning_rate"])


def test_bad_override_value_is_refused_by_validation_naming_the_key(params):
    with pytest.raises(ParamsError, match=r"sft.learning_rate"):
        P.apply_preset("paper-gemma-2-2b", params, ["sft.learning_rate=-1"])


def test_preset_file_with_unknown_key_is_an_error_naming_the_file(tmp_path, monkeypatch, params):
    (tmp_path / "bad.yaml").write_text("sft:\n  lr: 1.0e-6\n")
    monkeypatch.setenv(P.PRESETS_ENV, str(tmp_path))
    with pytest.raises(P.PresetError, match=r"bad.yaml: unknown key 'sft.lr'"):
        P.apply_preset("bad", params)


def test_cli_apply_rewrites_params_keeping_comments_and_validates(tmp_path, capsys):
    target = tmp_path / "params.yaml"
    shutil.copy(PARAMS, target)
    rc = P.cli_main(["apply", "paper-llama-3.1-8b", "--set", "prepare.train_size=100", "--params", str(target)])
    assert rc == 0
    text = target.read_text()
    assert "# every random choice of the pipeline, unless a source below has its own" in text
    p = load_params(target)
    assert p.base.student == "meta-llama/Llama-3.1-8B"
    assert p.sft.learning_rate == 1e-6
    assert p.prepare.train_size == 100
    assert "sft.learning_rate: 0.0002 -> 1e-06" in capsys.readouterr().out


def test_cli_apply_dry_run_writes_nothing(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(PARAMS, target)
    before = target.read_text()
    assert P.cli_main(["apply", "paper-gemma-2-2b", "--dry-run", "--params", str(target)]) == 0
    assert target.read_text() == before


def test_cli_apply_with_bad_override_fails_and_leaves_params_untouched(tmp_path, capsys):
    target = tmp_path / "params.yaml"
    shutil.copy(PARAMS, target)
    before = target.read_text()
    assert P.cli_main(["apply", "paper-gemma-2-2b", "--set", "sft.epochs=0", "--params", str(target)]) == 2
    assert "sft.epochs" in capsys.readouterr().err
    assert target.read_text() == before


def test_cli_list_shows_every_preset(capsys):
    assert P.cli_main(["list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in STUDENTS)


def test_exp_run_args_are_only_the_differences(params):
    args = P.exp_run_args("paper-gemma-2-9b", params_path=PARAMS)
    keys = [a.split("=", 1)[0] for a in args[1::2]]
    assert args[::2] == ["-S"] * len(keys)
    assert "sft.learning_rate" in keys and "base.student" in keys
    assert "sample.shots" in keys and "sample.k" in keys  # the paper differs from the CPU proxy here
    assert "tracking.experiment" not in keys and "sample.top_p" not in keys


def test_exp_run_args_through_dvc_give_the_applied_params(tmp_path, params):
    # dvc's own code for `dvc exp run -S`: the preset as an experiment must equal `preset apply`
    from dvc.utils.hydra import apply_overrides

    target = tmp_path / "params.yaml"
    shutil.copy(PARAMS, target)
    overrides = ["base.teacher=google/gemma-2-9b-it", "base.tasks=[gsm8k, math]"]
    args = P.exp_run_args("paper-gemma-2-2b", overrides, params_path=PARAMS)
    apply_overrides(target, args[1::2])
    expected = P.apply_preset("paper-gemma-2-2b", params, overrides)
    from ruamel.yaml import YAML

    got = YAML(typ="safe").load(target.read_text())  # YAML 1.2, as dvc itself reads params
    assert P.changed_keys(expected, got) == []


def test_params_written_by_dvc_exp_run_pass_load_params(tmp_path):
    from dvc.utils.hydra import apply_overrides

    target = tmp_path / "params.yaml"
    shutil.copy(PARAMS, target)
    apply_overrides(target, P.exp_run_args("paper-gemma-2-2b", params_path=PARAMS)[1::2])
    assert load_params(target).sft.learning_rate == 1e-6


@pytest.mark.parametrize("name", sorted(STUDENTS))
@pytest.mark.parametrize("processes, machines, accum", [(1, 1, 16), (2, 1, 8), (8, 1, 2), (16, 2, 1)])
def test_preset_keeps_64_sequences_per_step_for_any_process_count(name, params, processes, machines, accum):
    merged = P.apply_preset(name, params, [f"sft.num_processes={processes}", f"sft.num_machines={machines}"])
    s = validate_params(merged).sft
    assert (s.grad_accum, s.sequences_per_step) == (accum, 64)


def test_preset_refuses_a_process_count_that_cannot_reach_64(params):
    with pytest.raises(ParamsError, match=r"sft\.grad_accum: auto cannot reach sft\.effective_batch_size=64: "
                                          r"sft\.batch_size=4 x sft\.num_processes=32"):
        P.apply_preset("paper-gemma-2-2b", params, ["sft.num_processes=32", "sft.num_machines=4"])


def test_preset_refuses_a_grad_accum_that_misses_64_unless_allowed(params):
    with pytest.raises(ParamsError, match=r"sft\.grad_accum: .* = 256 sequences per optimizer step, but "
                                          r"sft\.effective_batch_size=64.*sft\.effective_batch_size: null"):
        P.apply_preset("paper-qwen2.5-1.5b", params, ["sft.grad_accum=16"])
    free = P.apply_preset("paper-qwen2.5-1.5b", params, ["sft.grad_accum=16", "sft.effective_batch_size=null"])
    assert validate_params(free).sft.grad_accum == 16


def test_default_params_do_not_enforce_an_effective_batch(params):
    s = validate_params(params).sft
    assert s.effective_batch_size is None and s.grad_accum == params["sft"]["grad_accum"]
    assert (s.precision, s.save_steps) == ("amp", [])


SOURCES = r"(?:paper|sft\.py|eval|ours)"
LABEL = re.compile(rf"\[({SOURCES}(?:\]/\[{SOURCES})*)\]")  # [sft.py] or [sft.py]/[eval]


def preset_labels(text: str) -> tuple[list[str], list[tuple[int, str, str]]]:
    """The keys a preset sets without a label (line numbers), and every label with the reason
    written after it (up to the next label or the next key), from the YAML's comments. The
    header's legend of the sources is skipped up to its block of cotshape's own choices."""
    unlabelled: list[str] = []
    labels: list[tuple[int, str, str]] = []
    current: list[Any] | None = None
    in_legend = True
    for no, line in enumerate(text.splitlines(), 1):
        if in_legend:
            in_legend = line.startswith("#") and "Choices the authors did not release" not in line
            if in_legend:
                continue
        code, _, comment = line.partition("#")
        key = re.match(r"^\s+([a-z_]+):\s*\S", code)
        if key or not comment.strip():
            current = None
        if key and not LABEL.search(comment):
            unlabelled.append(f"line {no}: {key.group(1)}")
        parts = LABEL.split(comment)
        if len(parts) == 1:
            if current is not None:
                current[2] += " " + comment.strip()
            continue
        for i in range(1, len(parts), 2):
            current = [no, parts[i], parts[i + 1].strip()]
            labels.append(current)  # type: ignore[arg-type]
    return unlabelled, [tuple(x) for x in labels]


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_every_key_and_label_in_a_preset_has_a_reason(name):
    text = (ROOT / "presets" / f"{name}.yaml").read_text()
    unlabelled, labels = preset_labels(text)
    assert unlabelled == [], f"{name}: keys without a [paper]/[sft.py]/[eval]/[ours] label: {unlabelled}"
    # a label is a claim about where a value comes from: it must say what (at least 3 words)
    short = [(no, lab, why) for no, lab, why in labels if len(re.findall(r"[A-Za-z0-9]+", why)) < 3]
    assert short == [], f"{name}: labels without a reason: {short}"
    # the protocol points the authors left open are marked as cotshape's choices
    ours = " ".join(why for _, lab, why in labels if lab == "ours")
    for point in ("EOS", "reported checkpoint", "MBPP", "flawed_source"):
        assert point in ours or point in text.split("[ours]", 1)[1], f"{name}: {point} not labelled [ours]"
    assert "_W_Balanced" in text  # select.balance's evidence is named


def test_preset_labels_finds_a_key_without_a_label_and_a_bare_label():
    unlabelled, labels = preset_labels("sft:\n  epochs: 10   # [sft.py]\n  lr: 1   # plain words\n")
    assert unlabelled == ["line 3: lr"]
    assert labels == [(2, "sft.py", "")]
