"""Typed, validated experiment parameters (the sections of ``params.yaml``).

Every key of params.yaml is a field of one of the dataclasses below, with its help text in the
field's metadata (``cotshape params`` style docs are generated from it: see :func:`describe`).
:func:`validate_params` turns the raw YAML dict into a :class:`Params` and refuses an unknown
key or a bad value with one :class:`ParamsError` whose message names the file and the key, e.g.
``params.yaml: degrade.flawed_fractions[2]: must be in [0, 1], got 1.5``.

The ``sft`` section is :class:`cotshape.sft.params.SFTParams` (a small module of its own,
re-exported by the trainer, so that no stage depends on the trainer's code); everything else
is here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from cotshape.core.errors import ParamsError, did_you_mean
from cotshape.core.fields import param as _f
from cotshape.core.records import read_utf8

#: upper bounds: generous for paper scale, small enough that a typo (1e12) fails here, not hours later
MAX_SEED = 2**32 - 1  # numpy, torch and vLLM take 32-bit seeds
MAX_PROBLEMS = 10_000_000
MAX_SAMPLES = 1024
MAX_TOKENS = 131_072
MAX_BATCH = 65_536
MAX_SHARDS = 4096
#: the sources of randomness with a seed of their own (base.data_seed, base.sft_seed, base.eval_seed)
SEED_SOURCES = ("data", "sft", "eval")




@dataclass
class BaseParams:
    seed: int = _f(0, "The seed of every random choice of the pipeline, unless a source has its own: the draw of the train/test problems (prepare) always, and the data, SFT and evaluation seeds below when they are null.",
                   min=0, max=MAX_SEED)
    data_seed: int | None = _f(None, "Seed of the data: teacher sampling, the G/W draw (plus select.seed_offset), paraphrases and degraded sets; null: base.seed. Changing it changes the samples and no SFT seed.",
                               min=0, max=MAX_SEED)
    sft_seed: int | None = _f(None, "Seed of SFT (adapter init, data order, dropout); null: base.seed. Changing it retrains every set on the same data and changes no sample.",
                              min=0, max=MAX_SEED)
    eval_seed: int | None = _f(None, "Seed of what is random after training: the bootstrap intervals of closeness and of the report (decoding in evaluation is greedy); null: base.seed.",
                               min=0, max=MAX_SEED)

    def seed_of(self, source: str) -> int:
        """The seed of one source of randomness: ``data``, ``sft`` or ``eval`` (its own key, or
        ``base.seed`` when that is null)."""
        if source not in SEED_SOURCES:
            raise ValueError(f"seed_of: unknown source {source!r}; one of {', '.join(SEED_SOURCES)}")
        own = getattr(self, f"{source}_seed")
        return self.seed if own is None else own
    tasks: list[str] = _f(None, "Tasks to run, any of gsm8k, math, countdown, mbpp, or a task registered by task_modules or an installed plugin.",
                          default_factory=lambda: ["gsm8k"])
    task_modules: list[str] = _f(None, "Importable modules that register more tasks with @register (e.g. mytasks.parity for mytasks/parity.py in the repository); imported before base.tasks is checked.",
                                 default_factory=list)
    teacher: str = _f("smollm2-135m-instruct", "Teacher model: hub id[@revision], local folder, or an offline alias: smollm2-135m-instruct (SmolLM2-135M-Instruct) or gemma3-270m (Gemma-3-270M base; README: Offline models).")
    student: str = _f("gemma3-270m", "Student model (fine-tuned and evaluated), same forms as teacher. The default, Gemma-3-270M base with plain prompts, learns from another model's CoTs, as the paper's base students do (README: What the offline default shows).")
    device: str = _f("auto", "auto (cuda when available, else cpu), cpu or cuda.", choices=("auto", "cpu", "cuda"))
    dtype: str = _f("auto", "Inference dtype: auto (bf16 where fast, else fp32), float32, bfloat16, float16.",
                    choices=("auto", "float32", "bfloat16", "float16"))
    prompt_format: str = _f("plain", "How every student prompt is built (SFT, closeness, evaluation, and paraphrase when paraphrase.model is the student): chat (the student's chat template) or plain (the authors' plain-text templates for base students, '...Problem:\\n{problem}\\n\\nSolution:', with their stop strings such as 'Problem:'; a base model without a chat template needs plain). The teacher is always prompted in chat.",
                            choices=("chat", "plain"))
    backend: str = _f("transformers", "Generation backend of every generating stage (sample, evaluate, paraphrase, model-written flawed CoTs in degrade): transformers (CPU/GPU) or vllm (GPU, extra 'gpu'; a LoRA student is merged into its base model in a temporary folder first).",
                      choices=("transformers", "vllm"))


@dataclass
class PrepareParams:
    source: str = _f("offline", "Where problems come from: offline (generated locally), hub (each task's Hugging Face dataset), or a local dataset path in the hub layout.")
    train_size: int = _f(100, "Training problems per task.", min=1, max=MAX_PROBLEMS)
    test_size: int = _f(200, "Test problems per task (200: a 10-point paired difference is detectable).", min=1, max=MAX_PROBLEMS)
    level: str = _f("easy", "Difficulty of the offline source: full (the task's usual offline data) or easy (a CPU proxy: problems a 135M few-shot teacher solves part of the time; gsm8k: one- and two-step word problems, countdown: three numbers 1-9, small targets). Tasks without an easy level refuse it; the hub source ignores it.",
                    choices=("easy", "full"))


@dataclass
class SampleParams:
    k: int = _f(8, "Teacher samples per training problem.", min=1, max=MAX_SAMPLES)
    shots: int = _f(4, "Worked exemplars (the task's teacher_exemplars, in the teacher's own phrasing) shown to the teacher as earlier chat turns before each problem; 0 = zero-shot, as in the paper. The student is trained on the zero-shot prompt either way.",
                    min=0, max=64)
    max_new_tokens: int = _f(128, "Longest chain of thought sampled, in tokens.", min=1, max=MAX_TOKENS)
    temperature: float = _f(0.6, "Sampling temperature (0 = greedy, then k must be 1).", min=0, max=100)
    top_p: float = _f(0.95, "Nucleus sampling mass.", min=1e-9, max=1)
    batch_size: int = _f(128, "Sequences decoded together (transformers backend).", min=1, max=MAX_BATCH)
    tensor_parallel_size: int = _f(1, "GPUs per vLLM engine (base.backend: vllm; every generating stage).", min=1, max=1024)
    shards: list[int] = _f(None, "Shard indices [0, 1, ..., N-1]: sampling is split into N DVC stages, each can run on its own machine.",
                           default_factory=lambda: [0], min=0, max=MAX_SHARDS - 1)


@dataclass
class SelectParams:
    balance: bool = _f(True, "Keep only problems that have both a correct (G) and a wrong (W) sample: G and W cover the same problems, and every other set (H, P, step-degraded, mixtures) is trained and scored on those same problems (select writes their ids), so all sets compared in a claim have the same size. false: each set is used whole and sizes differ.")
    seed_offset: int = _f(0, "Added to the data seed (base.data_seed, else base.seed) for the draw of G and W among a problem's samples.", min=0, max=MAX_SEED)
    max_verifier_errors: float = _f(0.05, "Largest share of samples whose grading failed (verifier error: sandbox down, gold answer unusable) that select accepts; above it select stops, since a broken verifier would look like a teacher that is always wrong.",
                                    min=0, max=1)
    allow_truncated: bool = _f(False, "Let G and W use CoTs cut at sample.max_new_tokens (finish_reason: length). false: only CoTs that ended on their own (a cut CoT's answer is often just the last number of the cut text); the select metrics count the samples excluded as truncated.")


@dataclass
class ParaphraseParams:
    model: str = _f("student", "Paraphrasing model: the student or the teacher (both are materialised, DVC-tracked folders).",
                    choices=("student", "teacher"))
    max_new_tokens: int | str = _f(128, "Longest paraphrase, in tokens, or auto: each problem's budget follows its human solution (2x its tokens rounded up to a power of two, at least 1024, at most 4096; cotshape/data/paraphrase.py says why).",
                                   min=1, max=MAX_TOKENS)
    temperature: float = _f(0.7, "Sampling temperature of the paraphraser.", min=0, max=100)
    retries: int = _f(1, "Extra attempts with a new seed when a paraphrase fails the verifier.", min=0, max=100)
    on_failure: str = _f("keep_original", "When every attempt fails: keep_original (use H) or drop (leave the problem out of P).",
                         choices=("keep_original", "drop"))
    allow_truncated: bool = _f(False, "Accept a paraphrase cut at max_new_tokens (finish_reason: length). false: a cut paraphrase fails like one that lost the answer (retried, then on_failure); a base model's paraphrase that loops until the limit would otherwise pass the verifier on its first answer line. The metrics count them as truncated.")


@dataclass
class DegradeParams:
    flawed_fractions: list[float] = _f(None, "Fractions p of completely flawed CoTs in the mixtures (each in (0, 1]); p = 0 is the base set itself (base_set), trained once and always the first point of the mixture curve.",
                                       default_factory=lambda: [0.25, 1.0])
    flawed_source: str = _f("corrupt", "Flawed CoTs: corrupt (every step programmatically perturbed) or model (teacher prompted to reason wrongly, verified wrong).",
                            choices=("corrupt", "model"))
    step_k: list[int] = _f(None, "Steps corrupted per CoT, one step-degraded set per value (a sweep: set step-K, file step/step-K.jsonl); a bare integer is read as a one-element list; [] trains no step-degraded set (no claim uses one).",
                           default_factory=list, min=1, max=1000)
    base_set: str = _f("G", "The correct CoTs that mixtures and the step-degraded set are built from: G (teacher CoTs, as in the paper), H or P.",
                       choices=("G", "H", "P"))


@dataclass
class EvaluateParams:
    max_new_tokens: int | str = _f(128, "Longest greedy answer at evaluation, in tokens, or auto: the task's value in the authors' eval scripts (2048 MATH and GSM8K, 4096 Countdown, 1024 MBPP).",
                                   min=1, max=MAX_TOKENS)
    scoring: str = _f("strict", "How answers are graded: strict (the project's verifiers: final-answer extraction, exact/symbolic comparison) or paper (the authors' released scorers: math-verify on the full text for MATH/GSM8K, the last line's <answer> for Countdown, fences stripped and the whole text run for MBPP). The eval metrics record which.",
                      choices=("strict", "paper"))
    batch_size: int = _f(128, "Sequences decoded together (the backend refills its batch as rows finish).", min=1, max=MAX_BATCH)


@dataclass
class DecontaminateParams:
    ngram: int = _f(8, "Word n-gram length of the overlap checks (question and completion against every test question and solution; open-r1 uses 8).",
                    min=1, max=64)
    fuzzy_threshold: float = _f(95.0, "rapidfuzz fuzz.ratio (0-100) at or above which a training question is a near copy of a test question (open-thoughts uses 95).",
                                min=0, max=100)
    action: str = _f("report", "report (count what is flagged, train on every set as it is) or drop (remove every flagged problem from every set of the task, so the sets stay equal; the report says how many).",
                     choices=("report", "drop"))


@dataclass
class ClosenessParams:
    batch_size: int = _f(16, "Examples per forward pass when scoring a set with the base student.", min=1, max=MAX_BATCH)


@dataclass
class ReportParams:
    margin: float = _f(0.1, "Equivalence margin of claim C5 (accuracy with 25 % flawed CoTs within ±margin of 0 % flawed), as a fraction: 0.1 = 10 points. Fixed before the run, never fitted to its results.",
                       min=0, max=1)
    n_boot: int = _f(10000, "Bootstrap resamples for every interval of the report (paired accuracy differences, closeness, the mixture slope).",
                     min=100, max=1_000_000)


@dataclass
class TrackingParams:
    experiment: str = _f("cotshape", "MLflow experiment name (one per pipeline).")
    tracking_uri: str = _f("sqlite:///mlflow.db", "MLflow tracking URI; the MLFLOW_TRACKING_URI environment variable overrides it.")


def _sft_cls():
    from cotshape.sft.params import SFTParams

    return SFTParams


SECTIONS: dict[str, Any] = {
    "base": BaseParams,
    "prepare": PrepareParams,
    "sample": SampleParams,
    "select": SelectParams,
    "paraphrase": ParaphraseParams,
    "degrade": DegradeParams,
    "decontaminate": DecontaminateParams,
    "sft": _sft_cls,
    "evaluate": EvaluateParams,
    "closeness": ClosenessParams,
    "report": ReportParams,
    "tracking": TrackingParams,
}


@dataclass
class Params:
    base: BaseParams
    prepare: PrepareParams
    sample: SampleParams
    select: SelectParams
    paraphrase: ParaphraseParams
    degrade: DegradeParams
    decontaminate: DecontaminateParams
    sft: Any
    evaluate: EvaluateParams
    closeness: ClosenessParams
    report: ReportParams
    tracking: TrackingParams

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


#: dataclass fields that the pipeline sets itself and params.yaml may not (SFT is seeded with base.sft_seed)
INTERNAL = {("sft", "seed")}


def _section_cls(name: str):
    cls = SECTIONS[name]
    return cls() if not dataclasses.is_dataclass(cls) else cls


def _unknown(key: str, allowed: list[str], where: str) -> ParamsError:
    hint = did_you_mean(key.split(".")[-1], allowed, n=1, cutoff=0.6)
    hint = f" ({hint})" if hint else ""
    return ParamsError(f"{where}: unknown key {key!r}{hint}; allowed: {', '.join(allowed)}")


def _check_value(value: Any, typ: Any, key: str, meta: dict, where: str) -> Any:
    """Coerce/validate one value against its annotated type and metadata (``choices``, ``min``,
    ``max``); the message is ``WHERE: KEY: must be ..., got VALUE`` (just ``KEY: ...`` without
    ``where``)."""
    at = f"{where}: {key}" if where else key
    if isinstance(typ, types.UnionType) and type(None) in get_args(typ):  # ``int | None``: null allowed
        if value is None:
            return None
        typ = next(t for t in get_args(typ) if t is not type(None))
    if isinstance(typ, types.UnionType) and str in get_args(typ):  # ``int | str``: an integer or auto
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{at}: must be an integer or auto, got {value!r}")
        typ = next(t for t in get_args(typ) if t is not str)
    origin = get_origin(typ)
    if origin is dict:
        key_t, item_t = get_args(typ)
        if not isinstance(value, dict):
            raise ParamsError(f"{at}: must be a mapping, got {value!r}")
        return {_check_value(k, key_t, f"{key} (a key)", {}, where): _check_value(v, item_t, f"{key}.{k}", meta, where)
                for k, v in value.items()}
    if origin is list:
        (item_t,) = get_args(typ)
        if not isinstance(value, list):
            raise ParamsError(f"{at}: must be a list, got {value!r}")
        return [_check_value(v, item_t, f"{key}[{i}]", meta, where) for i, v in enumerate(value)]
    if typ is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{at}: must be true or false, got {value!r}")
    elif typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{at}: must be an integer, got {value!r}")
    elif typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{at}: must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):  # nan passes every < and > check below
            raise ParamsError(f"{at}: must be a finite number, got {value!r}")
    elif typ is str:
        if not isinstance(value, str) or not value:
            raise ParamsError(f"{at}: must be a non-empty string, got {value!r}")
    choices = meta.get("choices")
    if choices and value not in choices:
        raise ParamsError(f"{at}: must be one of {', '.join(map(str, choices))}, got {value!r}")
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None and value < lo:
        raise ParamsError(f"{at}: must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ParamsError(f"{at}: must be <= {hi}, got {value!r}")
    return value


def _build_section(name: str, raw: Any, where: str):
    cls = _section_cls(name)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(f"{where}: {name}: must be a mapping of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if (name, f.name) not in INTERNAL}
    hints = get_type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            raise _unknown(f"{name}.{key}", list(fields), where)
        kwargs[key] = _check_value(value, hints[key], f"{name}.{key}", dict(fields[key].metadata), where)
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:
        msg = str(e)
        raise ParamsError(f"{where}: {msg if msg.startswith(name + '.') else name + ': ' + msg}") from None


def _cross_checks(p: Params, where: str) -> None:
    from cotshape.tasks import (  # the registry is the one list of task names
        list_tasks,
        load_task_modules,
    )

    load_task_modules(p.base.task_modules)
    known = list_tasks()
    for i, t in enumerate(p.base.tasks):
        if t not in known:
            hint = did_you_mean(t, known, n=1, cutoff=0.6)
            hint = f" ({hint})" if hint else ""
            raise ParamsError(f"{where}: base.tasks[{i}]: unknown task {t!r}{hint}; allowed: {', '.join(known)}")
    if not p.base.tasks:
        raise ParamsError(f"{where}: base.tasks: must name at least one task")
    if len(set(p.base.tasks)) != len(p.base.tasks):
        raise ParamsError(f"{where}: base.tasks: lists a task twice: {p.base.tasks}")
    for i, frac in enumerate(p.degrade.flawed_fractions):
        if frac == 0.0:
            raise ParamsError(f"{where}: degrade.flawed_fractions[{i}]: 0.0 is the base set itself "
                              "(degrade.base_set), always the first point of the curve; list only fractions in (0, 1]")
        if not 0.0 < frac <= 1.0:
            raise ParamsError(f"{where}: degrade.flawed_fractions[{i}]: must be in (0, 1], got {frac}")
    if not p.degrade.flawed_fractions:
        raise ParamsError(f"{where}: degrade.flawed_fractions: must list at least one fraction, e.g. [1.0]")
    if len(set(p.degrade.flawed_fractions)) != len(p.degrade.flawed_fractions):
        raise ParamsError(f"{where}: degrade.flawed_fractions: lists a fraction twice")
    if len(set(p.degrade.step_k)) != len(p.degrade.step_k):
        raise ParamsError(f"{where}: degrade.step_k: lists a step count twice: {p.degrade.step_k}")
    from cotshape.core.artifacts import mix_set_name, step_set_name

    sets = ["H", "G", "W", "P", *map(mix_set_name, p.degrade.flawed_fractions), *map(step_set_name, p.degrade.step_k)]
    for name in p.sft.runs_by_set:
        if name not in sets:
            hint = did_you_mean(name, sets, n=1, cutoff=0.6)
            raise ParamsError(f"{where}: sft.runs_by_set.{name}: no training set of that name"
                              f"{' (' + hint + ')' if hint else ''}; the sets: {', '.join(sets)}")
    if not p.sample.shards:
        raise ParamsError(f"{where}: sample.shards: must list at least one shard, e.g. [0]")
    if p.sample.shards != list(range(len(p.sample.shards))):
        raise ParamsError(f"{where}: sample.shards: must be [0, 1, ..., N-1] for N shards, got {p.sample.shards}")
    if p.base.seed_of("data") + p.select.seed_offset > MAX_SEED:
        raise ParamsError(f"{where}: select.seed_offset: the data seed (base.data_seed, else base.seed) + "
                          f"select.seed_offset must be <= {MAX_SEED}, got {p.base.seed_of('data') + p.select.seed_offset}")
    if p.sample.temperature == 0 and p.sample.k > 1:
        raise ParamsError(f"{where}: sample.k: greedy sampling (sample.temperature: 0) gives k identical samples; set k: 1 or temperature > 0")
    if p.prepare.source not in ("offline", "hub") and not Path(p.prepare.source).exists() and "/" not in p.prepare.source:
        raise ParamsError(f"{where}: prepare.source: must be offline, hub, a hub dataset id or an existing path, got {p.prepare.source!r}")


def validate_params(params: dict[str, Any], source: str = "params.yaml") -> Params:
    """Validate a raw params dict (as read from YAML) and return typed :class:`Params`."""
    if not isinstance(params, dict):
        raise ParamsError(f"{source}: must be a mapping of sections, got {type(params).__name__}")
    for name in params:
        if name not in SECTIONS:
            raise _unknown(name, list(SECTIONS), source)
    fracs = (params.get("degrade") or {}).get("flawed_fractions") if isinstance(params.get("degrade"), dict) else None
    for i, frac in enumerate(fracs if isinstance(fracs, list) else []):
        if isinstance(frac, int) and not isinstance(frac, bool):
            # DVC names the sft_mix/evaluate_mix stages and files from the literal value: 1 and
            # 1.0 would give mix-1 in dvc.yaml but mix-1.0 from the stages
            raise ParamsError(f"{source}: degrade.flawed_fractions[{i}]: write fractions as floats ({frac}.0), got {frac}")
    sample = params.get("sample")
    if isinstance(sample, dict) and "backend" in sample:
        raise ParamsError(f"{source}: sample.backend: moved to base.backend (one backend for every generating "
                          f"stage: sample, evaluate, paraphrase, degrade); write `backend: {sample['backend']}` "
                          "under base: and delete sample.backend")
    degrade = params.get("degrade")
    if isinstance(degrade, dict) and isinstance(degrade.get("step_k"), int) and not isinstance(degrade["step_k"], bool):
        params = {**params, "degrade": {**degrade, "step_k": [degrade["step_k"]]}}  # a bare int: one set
    built = {name: _build_section(name, params.get(name), source) for name in SECTIONS}
    p = Params(**built)
    _cross_checks(p, source)
    return p


def _yaml12_loader():
    """A SafeLoader that reads floats the YAML 1.2 way, as DVC (ruamel) writes them.

    PyYAML follows YAML 1.1, where ``1e-06`` (no dot) is a *string*; ``dvc exp run -S
    sft.learning_rate=1e-06`` writes exactly that, so we add the 1.2 float pattern.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def _refuse_duplicate_keys(node: Any, prefix: str, path: Path) -> None:
    """Refuse a key written twice in one mapping (YAML loaders silently keep the last one)."""
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            name = f"{prefix}.{key}" if prefix else str(key)
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                raise ParamsError(f"{path}:{line}: {name}: duplicate key (first on line {seen[key]})")
            if key is not None:
                seen[key] = line
            _refuse_duplicate_keys(value_node, name, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{prefix}[{i}]", path)


def check_option(option: str, section: str, key: str, value: Any) -> Any:
    """Check a command-line option with the rules of the params key it mirrors, e.g.
    ``check_option("--temperature", "sample", "temperature", t)``; the message names the option."""
    cls = _section_cls(section)
    f = {f.name: f for f in dataclasses.fields(cls)}[key]
    return _check_value(value, get_type_hints(cls)[key], option, dict(f.metadata), "")


def load_params(path: str | os.PathLike = "params.yaml") -> Params:
    """Read and validate a params file."""
    import yaml

    path = Path(path)
    text = read_utf8(path, ParamsError)
    try:
        loader = _yaml12_loader()
        _refuse_duplicate_keys(yaml.compose(text, Loader=loader), "", path)  # noqa: S506 - a SafeLoader
        raw = yaml.load(text, Loader=loader) or {}  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ParamsError(f"{path}{line}: invalid YAML ({getattr(e, 'problem', e)})") from None
    return validate_params(raw, str(path))


def describe() -> str:
    """Markdown documentation of every params key (generated from the dataclasses)."""
    lines = ["| key | default | what it does |", "|---|---|---|"]
    for name in SECTIONS:
        cls = _section_cls(name)
        for f in dataclasses.fields(cls):
            if (name, f.name) in INTERNAL:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            meta = f.metadata or {}
            help_ = meta.get("help", "")
            if meta.get("choices"):
                help_ += f" One of: {', '.join(map(str, meta['choices']))}."
            help_ = help_.replace("|", "\\|")  # a literal | would split the table cell
            lines.append(f"| `{name}.{f.name}` | `{default}` | {help_} |")
    return "\n".join(lines) + "\n"


def set_name(fraction: float) -> str:
    """The training-set name of a flawed mixture: ``mix-0.25`` (:func:`cotshape.core.artifacts.mix_set_name`)."""
    from cotshape.core.artifacts import mix_set_name

    return mix_set_name(fraction)
