"""params.yaml validation: every bad key or value is refused with the key named."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO_ROOT

from cotshape.core.config import ParamsError, describe, load_params, set_name, validate_params

DEFAULT = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def with_change(path: str, value):
    raw = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = raw
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return raw


def test_default_params_validate():
    p = load_params(REPO_ROOT / "params.yaml")
    assert p.base.tasks == ["gsm8k"]
    assert p.degrade.flawed_fractions == [0.25, 1.0] and p.degrade.step_k == []  # C5 and C6 need these (README: Time)
    assert p.sample.k >= 1


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("degrade.flawed_fractions", [0.25, 1.5], r"degrade\.flawed_fractions\[1\]: must be in \(0, 1\]"),
        ("degrade.flawed_fractions", [0.0, 0.5], r"degrade\.flawed_fractions\[0\]: 0\.0 is the base set itself"),
        ("degrade.flawed_fractions", [0.5, 0.5], r"degrade\.flawed_fractions: lists a fraction twice"),
        ("sample.k", 0, r"sample\.k: must be >= 1"),
        ("sample.k", "four", r"sample\.k: must be an integer"),
        ("base.tasks", ["gsm8k", "gsm9k"], r"base\.tasks\[1\]: unknown task 'gsm9k' \(did you mean 'gsm8k'\?\)"),
        ("base.tasks", [], r"base\.tasks: must name at least one task"),
        ("sample.tempreature", 0.5, r"unknown key 'sample\.tempreature' \(did you mean 'temperature'\?\)"),
        ("paraphrase.on_failure", "ignore", r"paraphrase\.on_failure: must be one of keep_original, drop"),
        ("sample.shards", [1], r"sample\.shards: must be \[0, 1, \.\.\., N-1\]"),
        ("sample.top_p", 1.5, r"sample\.top_p: must be <= 1"),
        ("select.balance", "yes", r"select\.balance: must be true or false"),
        ("sft.learning_rate", -1.0, r"sft\.learning_rate"),
        ("sft.method", "qlora", r"sft\.method"),
        ("base.backend", "llama.cpp", r"base\.backend: must be one of transformers, vllm"),
        ("sample.backend", "vllm", r"sample\.backend: moved to base\.backend .*write `backend: vllm` under base:"),
        ("degrade.step_k", [1, 2, 1], r"degrade\.step_k: lists a step count twice"),
        ("degrade.step_k", [0], r"degrade\.step_k\[0\]: must be >= 1"),
        ("degrade.step_k", "2", r"degrade\.step_k: must be a list"),
        ("select.allow_truncated", "no", r"select\.allow_truncated: must be true or false"),
        ("sft.runs_by_set", {"mix-0.2": 7}, r"sft\.runs_by_set\.mix-0\.2: no training set of that name \(did you mean 'mix-0\.25'\?\); "
                                      r"the sets: H, G, W, P, mix-0\.25, mix-1\.0"),
        ("sft.runs_by_set", {"G": 0}, r"sft\.runs_by_set\.G: must be >= 1"),
        ("sft.runs_by_set", {"G": "7"}, r"sft\.runs_by_set\.G: must be an integer"),
        ("sft.runs_by_set", [7], r"sft\.runs_by_set: must be a mapping"),
    ],
)
def test_bad_values_name_the_key(path, value, match):
    with pytest.raises(ParamsError, match=match) as exc:
        validate_params(with_change(path, value), "params.yaml")
    assert str(exc.value).startswith("params.yaml: ")


def test_runs_by_set_overrides_sft_runs_for_the_named_sets():
    sft = validate_params(with_change("sft.runs_by_set", {"G": 7, "mix-1.0": 2})).sft
    assert (sft.runs_for("G"), sft.runs_for("mix-1.0"), sft.runs_for("H")) == (7, 2, sft.runs)


def test_step_k_bare_int_is_one_set_and_backend_is_one_key():
    p = validate_params(with_change("degrade.step_k", 3))
    assert p.degrade.step_k == [3]
    assert validate_params(with_change("degrade.step_k", [1, 4])).degrade.step_k == [1, 4]
    d = validate_params(DEFAULT)
    assert d.base.backend == "transformers" and not hasattr(d.sample, "backend")
    assert d.select.allow_truncated is False and d.degrade.step_k == []
    assert validate_params(with_change("degrade.step_k", [])).degrade.step_k == []  # no step-degraded set


def test_unknown_section():
    raw = copy.deepcopy(DEFAULT)
    raw["sampel"] = {"k": 2}
    with pytest.raises(ParamsError, match=r"unknown key 'sampel' \(did you mean 'sample'\?\)"):
        validate_params(raw)


def test_greedy_with_k_above_one_refused():
    raw = with_change("sample.temperature", 0)
    with pytest.raises(ParamsError, match=r"sample\.k: greedy sampling"):
        validate_params(raw)


def test_missing_sections_take_defaults():
    p = validate_params({"base": {"tasks": ["countdown"]}})
    assert p.base.tasks == ["countdown"] and p.sample.k == 8


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("base:\n  seed: 0\n  tasks: [gsm8k\nsample:\n  k: 2\n")
    with pytest.raises(ParamsError, match=rf"{bad}:\d+: invalid YAML"):
        load_params(bad)


def test_describe_documents_every_default_key():
    doc = describe()
    for section, keys in DEFAULT.items():
        for key in keys:
            assert f"`{section}.{key}`" in doc


def test_set_name_matches_dvc_rendering():
    assert [set_name(p) for p in (0, 0.25, 1)] == ["mix-0.0", "mix-0.25", "mix-1.0"]


def test_readme_documents_every_param():
    """README's params table is generated (scripts/update_readme_params.py); keep it current."""
    readme = (REPO_ROOT / "README.md").read_text()
    start, end = readme.index("<!-- params-table -->"), readme.index("<!-- /params-table -->")
    assert readme[start:end].strip().removeprefix("<!-- params-table -->").strip() == describe().strip()


def test_yaml12_floats_as_dvc_writes_them(tmp_path):
    # `dvc exp run -S sft.learning_rate=1e-06` writes 1e-06: a float in YAML 1.2, a string in 1.1
    f = tmp_path / "params.yaml"
    f.write_text("sft:\n  learning_rate: 1e-06\n  weight_decay: 5E+0\n")
    p = load_params(f)
    assert p.sft.learning_rate == 1e-06 and p.sft.weight_decay == 5.0


def test_params_yaml_equals_the_documented_defaults():
    """params.yaml spells out every key with its dataclass default (what README documents)."""
    from cotshape.core.config import INTERNAL

    defaults = validate_params({}).to_dict()  # every section built from its dataclass defaults
    for name, section in defaults.items():
        for key, default in section.items():
            if (name, key) in INTERNAL:
                continue
            assert DEFAULT[name][key] == default, f"{name}.{key}"


def test_sft_seed_is_refused_and_integer_fractions_too():
    with pytest.raises(ParamsError, match=r"unknown key 'sft\.seed'"):
        validate_params(with_change("sft.seed", 3))
    with pytest.raises(ParamsError, match=r"degrade\.flawed_fractions\[1\]: write fractions as floats \(1\.0\)"):
        validate_params(with_change("degrade.flawed_fractions", [0.5, 1]))


@pytest.mark.parametrize(
    ("path", "value", "match"),
    [
        ("sample.temperature", float("nan"), r"sample\.temperature: must be a finite number, got nan"),
        ("sample.temperature", float("inf"), r"sample\.temperature: must be a finite number, got inf"),
        ("paraphrase.temperature", float("nan"), r"paraphrase\.temperature: must be a finite number"),
        ("sample.top_p", float("nan"), r"sample\.top_p: must be a finite number"),
        ("sft.learning_rate", float("inf"), r"sft\.learning_rate: must be a finite number"),
        ("degrade.flawed_fractions", [0.5, float("nan")], r"degrade\.flawed_fractions\[1\]: must be a finite number"),
        ("sample.k", 10**12, r"sample\.k: must be <= \d+, got 1000000000000"),
        ("prepare.train_size", 10**30, r"prepare\.train_size: must be <= \d+"),
        ("prepare.train_size", 1e30, r"prepare\.train_size: must be an integer"),
        ("prepare.test_size", 10**9, r"prepare\.test_size: must be <= \d+"),
        ("sample.max_new_tokens", 10**9, r"sample\.max_new_tokens: must be <= \d+"),
        ("sample.batch_size", 10**9, r"sample\.batch_size: must be <= \d+"),
        ("evaluate.batch_size", 10**9, r"evaluate\.batch_size: must be <= \d+"),
        ("sft.batch_size", 10**9, r"sft\.batch_size: must be <= \d+"),
        ("base.seed", -1, r"base\.seed: must be >= 0, got -1"),
        ("base.seed", 2**32, r"base\.seed: must be <= 4294967295, got 4294967296"),
        ("select.seed_offset", -1, r"select\.seed_offset: must be >= 0"),
        ("sample.shards", [], r"sample\.shards: must list at least one shard"),
        ("sft.method", "qlora", r"sft\.method: must be one of lora, full, got 'qlora'"),
    ],
)
def test_non_finite_and_unbounded_values_refused(path, value, match):
    with pytest.raises(ParamsError, match=match) as exc:
        validate_params(with_change(path, value), "params.yaml")
    assert str(exc.value).startswith("params.yaml: ")


def test_seed_plus_offset_stays_a_32_bit_seed():
    raw = with_change("base.seed", 2**32 - 1)
    raw["select"]["seed_offset"] = 1
    with pytest.raises(ParamsError, match=r"select\.seed_offset: the data seed \(base\.data_seed, else base\.seed\) \+ select\.seed_offset must be <= 4294967295"):
        validate_params(raw)
    raw["base"]["data_seed"] = 2**32 - 2  # the data seed's own key counts, not base.seed
    raw["base"]["seed"] = 0
    with pytest.raises(ParamsError, match=r"must be <= 4294967295, got 4294967296$"):
        raw["select"]["seed_offset"] = 2
        validate_params(raw)


def test_yaml_nan_and_inf_literals_refused(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("sample:\n  temperature: .nan\n")
    with pytest.raises(ParamsError, match=rf"{f}: sample\.temperature: must be a finite number, got nan"):
        load_params(f)
    f.write_text("paraphrase:\n  temperature: .inf\n")
    with pytest.raises(ParamsError, match=rf"{f}: paraphrase\.temperature: must be a finite number, got inf"):
        load_params(f)


def test_duplicate_yaml_key_names_key_and_line(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("sample:\n  k: 2\n  temperature: 0.5\n  k: 8\n")
    with pytest.raises(ParamsError, match=rf"{f}:4: sample\.k: duplicate key \(first on line 2\)"):
        load_params(f)
    f.write_text("base:\n  seed: 1\nbase:\n  seed: 2\n")
    with pytest.raises(ParamsError, match=rf"{f}:3: base: duplicate key \(first on line 1\)"):
        load_params(f)


def test_check_option_uses_the_params_rules():
    from cotshape.core.config import check_option

    assert check_option("--k", "sample", "k", 4) == 4
    with pytest.raises(ParamsError, match=r"^--temperature: must be a finite number, got nan$"):
        check_option("--temperature", "sample", "temperature", float("nan"))
    with pytest.raises(ParamsError, match=r"^--seed: must be >= 0, got -1$"):
        check_option("--seed", "base", "seed", -1)
