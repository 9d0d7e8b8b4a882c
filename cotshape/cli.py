"""The ``cotshape`` command line (typer).

    cotshape sample --task gsm8k --problems train.jsonl --model smollm2-135m-instruct --k 4 \\
        --max-new-tokens 160 --temperature 0.8 --seed 0 --out samples.jsonl [--shard 0/2]
    cotshape verify --task gsm8k --problems train.jsonl --in samples.jsonl --out verified.jsonl
    cotshape models materialize SPEC OUT_DIR
    cotshape tasks list
    cotshape tasks show gsm8k --source offline -n 3
    cotshape preset list | show NAME | apply NAME [--set K=V] | exp NAME [--run]
    cotshape compare [--repo .] [--json SAVED] [--out compare]   (seeds, sweeps)
    cotshape export [--repo .] --out DIR [--push-to-hub REPO]    (the training sets as a DatasetDict)
    cotshape decontaminate --train A.jsonl --test B.jsonl [--field question] [--json]
    cotshape slurm submit [--repo .] [--targets STAGE ...] [--partition P] [--gpus N] [--dry-run]
    cotshape -h | --version

The pipeline itself (prepare ... report) runs with ``dvc repro``; these commands are its parts that
make sense on their own, and the tools around it. Defaults of ``cotshape sample`` are the params
defaults (cotshape/core/config.py), so a command and a stage sample alike.

Bad input (a malformed record file, an unknown task, model spec or parameter) prints one line
``error: ...`` to stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from cotshape.core.config import BaseParams, SampleParams

# -h as well as --help everywhere; plain help text (rich markup would eat "[@revision]")
_TYPER = {"no_args_is_help": True, "rich_markup_mode": None,
          "context_settings": {"help_option_names": ["-h", "--help"]}}
app = typer.Typer(add_completion=False, help="Shape of Thought experiments. The pipeline runs with `dvc repro` "
                  "(README); these commands sample and verify chains of thought on their own, materialise "
                  "models, show tasks, apply paper presets, compare experiments, export the training sets and "
                  "check them for test-set contamination.",
                  **_TYPER)
models_app = typer.Typer(help="Model folders: materialise a spec into a plain HF folder.", **_TYPER)
tasks_app = typer.Typer(help="The reasoning tasks.", **_TYPER)
preset_app = typer.Typer(help="Paper-scale presets (presets/*.yaml): list, show, apply to params.yaml, "
                         "or run as a DVC experiment.", **_TYPER)
slurm_app = typer.Typer(help="Run the DVC stage graph on Slurm: one sbatch job per stage.", **_TYPER)
app.add_typer(models_app, name="models")
app.add_typer(tasks_app, name="tasks")
app.add_typer(preset_app, name="preset")
app.add_typer(slurm_app, name="slurm")

_SAMPLE = SampleParams()
_BASE = BaseParams()


class BackendChoice(str, enum.Enum):
    transformers = "transformers"
    vllm = "vllm"


class DtypeChoice(str, enum.Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


_DEFAULT_BACKEND = BackendChoice(_BASE.backend)
_DEFAULT_DTYPE = DtypeChoice(_BASE.dtype)


def _version(value: bool) -> None:
    if value:
        from cotshape import __version__

        typer.echo(f"cotshape {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Shape of Thought experiments (see `cotshape -h`)."""

DEFAULT_MODEL_CACHE = Path(os.environ.get("COTSHAPE_CACHE", Path.home() / ".cache" / "cotshape")) / "models"


def model_folder(spec: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The folder or hub id to load for ``spec``: an alias is materialised once into
    ``cache_dir`` (the pipeline instead materialises it as a DVC out and passes the folder)."""
    from cotshape.core.models import materialize, resolve_spec

    ms = resolve_spec(spec)
    if ms.kind != "alias":
        return ms.id
    folder = Path(cache_dir or DEFAULT_MODEL_CACHE) / ms.id
    if not (folder / "config.json").exists():
        typer.echo(f"materialising {ms.id} into {folder} (once)", err=True)
        materialize(ms.id, folder)
    return str(folder)


def _check_sample_options(**opts) -> None:
    """Check ``cotshape sample``'s options with the rules of the params keys they mirror (bounds,
    finite numbers, choices), before any file or model is loaded."""
    import re

    from cotshape.core.config import check_option
    from cotshape.core.errors import InputError

    mirrors = {"k": "sample", "max_new_tokens": "sample", "temperature": "sample", "top_p": "sample",
               "seed": "base", "backend": "base", "batch_size": "sample", "device": "base", "dtype": "base",
               "tensor_parallel_size": "sample"}
    for name, section in mirrors.items():
        if name == "device" and re.fullmatch(r"cuda:\d+|mps", opts[name]):
            continue  # a particular GPU, or Apple's: fine for one command, not a params choice
        check_option("--" + name.replace("_", "-"), section, name, opts[name])
    for name in ("chunk_size", "limit"):
        if opts[name] is not None and opts[name] < 1:
            raise InputError(f"--{name.replace('_', '-')}: must be >= 1, got {opts[name]}")
    if opts["temperature"] == 0 and opts["k"] > 1:
        raise InputError(f"--k: greedy sampling (--temperature 0) gives {opts['k']} identical samples; "
                         "use --k 1 or --temperature > 0")


@app.command()
def sample(
    task: Annotated[str, typer.Option(help="task name (cotshape tasks list)")],
    problems: Annotated[Path, typer.Option(help="problem file (JSONL/Parquet)")],
    model: Annotated[str, typer.Option(help="model spec: hub id[@rev], local folder, or alias")],
    out: Annotated[Path, typer.Option(help="output JSONL (OUT.partial holds resumable progress)")],
    k: Annotated[int, typer.Option(help="samples per problem (sample.k)")] = _SAMPLE.k,
    max_new_tokens: Annotated[int, typer.Option(help="sample.max_new_tokens")] = _SAMPLE.max_new_tokens,
    temperature: Annotated[float, typer.Option(help="sample.temperature (0: greedy, with --k 1)")] = _SAMPLE.temperature,
    top_p: Annotated[float, typer.Option(help="sample.top_p")] = _SAMPLE.top_p,
    seed: Annotated[int, typer.Option(help="base.seed")] = _BASE.seed,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    shard: Annotated[str | None, typer.Option(help="I/N: sample problems with index % N == I")] = None,
    backend: Annotated[BackendChoice, typer.Option(help="base.backend")] = _DEFAULT_BACKEND,
    batch_size: Annotated[int, typer.Option(help="sequences decoded together (transformers)")] = _SAMPLE.batch_size,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N (base.device)")] = _BASE.device,
    dtype: Annotated[DtypeChoice, typer.Option(help="base.dtype")] = _DEFAULT_DTYPE,
    tensor_parallel_size: Annotated[int, typer.Option(help="GPUs per model (vllm)")] = _SAMPLE.tensor_parallel_size,
    chunk_size: Annotated[int, typer.Option(help="problems per backend call")] = 256,
    model_cache: Annotated[Path | None, typer.Option(help="where an alias is materialised")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N problems")] = None,
    shots: Annotated[int, typer.Option(help="worked exemplars before each problem (sample.shots)")] = _SAMPLE.shots,
) -> None:
    """Sample K chains of thought per problem from a teacher (resumable, shardable)."""
    from cotshape.core.errors import InputError
    from cotshape.core.records import read_problems
    from cotshape.data.sampling import parse_shard, run_sampling
    from cotshape.generation import get_backend
    from cotshape.generation.base import SamplingParams
    from cotshape.tasks import get_task

    backend, dtype = BackendChoice(backend).value, DtypeChoice(dtype).value
    t = get_task(task)
    sh = parse_shard(shard)
    _check_sample_options(k=k, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
                          backend=backend, batch_size=batch_size, device=device, dtype=dtype,
                          tensor_parallel_size=tensor_parallel_size, chunk_size=chunk_size, limit=limit)
    params = SamplingParams(n=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            stop=list(stop or []), seed=seed)
    probs = read_problems(problems)
    if limit is not None:
        probs = probs[:limit]
    if not probs:
        raise InputError(f"{problems}: no problems to sample (the file is empty)")
    t.teacher_messages(probs[0], shots)  # a bad --shots fails before the model loads
    folder = model_folder(model, model_cache)
    kw = {"tensor_parallel_size": tensor_parallel_size, "seed": seed} if backend == "vllm" else {}
    be = get_backend(backend, folder, device=device, dtype=dtype, batch_size=batch_size, **kw)
    n = run_sampling(t, probs, be, k, params, out, teacher=model, shard=sh, chunk_size=chunk_size, shots=shots)
    typer.echo(f"wrote {n} samples to {out}", err=True)


@app.command()
def verify(
    task: Annotated[str, typer.Option(help="task name")],
    problems: Annotated[Path, typer.Option(help="problem file the samples refer to")],
    in_path: Annotated[Path, typer.Option("--in", help="samples JSONL")],
    out: Annotated[Path, typer.Option(help="verified JSONL (samples + verdict fields)")],
    workers: Annotated[int | None, typer.Option(help="worker processes (default: all cores)")] = None,
) -> None:
    """Grade every sample; adds correct/parsed/extracted/reason to each record."""
    from cotshape.data.verify import verify_file

    summary = verify_file(task, problems, in_path, out, workers=workers)
    typer.echo(json.dumps(summary, sort_keys=True), err=True)


@models_app.command("materialize")
def models_materialize(
    spec: Annotated[str, typer.Argument(help="hub id[@rev], local folder, or alias")],
    out_dir: Annotated[Path, typer.Argument(help="folder to write (replaced atomically)")],
) -> None:
    """Write SPEC as a plain Hugging Face folder (safetensors, tokenizer, chat template)."""
    from cotshape.core.models import materialize

    path = materialize(spec, out_dir)
    typer.echo(str(path))


@tasks_app.command("list")
def tasks_list() -> None:
    """Print the registered task names."""
    from cotshape.tasks import list_tasks

    for name in list_tasks():
        typer.echo(name)


@tasks_app.command("show")
def tasks_show(
    task: Annotated[str, typer.Argument(help="task name")],
    source: Annotated[str, typer.Option(help="offline | hub | a hub id or local dataset path")] = "offline",
    split: Annotated[str, typer.Option(help="train | test")] = "test",
    n: Annotated[int, typer.Option("-n", help="how many problems")] = 3,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Print N problems of TASK as JSON lines."""
    from cotshape.tasks import get_task

    for p in get_task(task).load(split, source=source, limit=n, seed=seed):
        typer.echo(json.dumps(p, ensure_ascii=False))


_SET = typer.Option("--set", metavar="KEY=VALUE", help="override one key after the preset, e.g. "
                    "--set prepare.train_size=500 (repeatable)")
_PARAMS = typer.Option("--params", help="params file")


@preset_app.command("list")
def preset_list() -> None:
    """List the presets, one line each."""
    from cotshape.pipeline.presets import cmd_list

    cmd_list()


@preset_app.command("show")
def preset_show(name: Annotated[str, typer.Argument(help="preset name (or its short form, e.g. gemma-2-9b)")]) -> None:
    """Print a preset file, with the source of each setting."""
    from cotshape.pipeline.presets import cmd_show

    cmd_show(name)


@preset_app.command("apply")
def preset_apply(
    name: Annotated[str, typer.Argument(help="preset name")],
    overrides: Annotated[list[str] | None, _SET] = None,
    params_file: Annotated[str, _PARAMS] = "params.yaml",
    dry_run: Annotated[bool, typer.Option(help="print the changes, write nothing")] = False,
) -> None:
    """Rewrite params.yaml with the preset (validated first; comments kept)."""
    from cotshape.pipeline.presets import cmd_apply

    cmd_apply(name, list(overrides or []), params_file, dry_run)


@preset_app.command("exp")
def preset_exp(
    name: Annotated[str, typer.Argument(help="preset name")],
    overrides: Annotated[list[str] | None, _SET] = None,
    params_file: Annotated[str, _PARAMS] = "params.yaml",
    run: Annotated[bool, typer.Option(help="run `dvc exp run` instead of printing it")] = False,
) -> None:
    """Print (or --run) the `dvc exp run -S ...` command of the preset."""
    from cotshape.pipeline.presets import cmd_exp

    code = cmd_exp(name, list(overrides or []), params_file, run)
    if code:
        raise typer.Exit(code)


@app.command()
def compare(
    repo: Annotated[Path, typer.Option(help="git + DVC repository whose experiments to compare")] = Path("."),
    out: Annotated[Path | None, typer.Option(help="folder for compare.md and compare.json "
                                             "(default: REPO/compare; reports/ belongs to the report stage)")] = None,
    json_file: Annotated[Path | None, typer.Option("--json", help="a saved `dvc exp show --json` "
                                                   "to read instead of running dvc")] = None,
    ignore: Annotated[list[str] | None, typer.Option(help="param that may differ within a group "
                                                     "(repeatable; default: base.seed and the per-source seeds)")] = None,
    group_by: Annotated[list[str] | None, typer.Option(help="group only by this param (repeatable); "
                                                       "every other param may differ within a group")] = None,
    workspace: Annotated[bool, typer.Option(help="also compare the uncommitted workspace")] = False,
    all_commits: Annotated[bool, typer.Option(help="experiments of every commit (dvc exp show -A), "
                                              "not only HEAD's")] = False,
) -> None:
    """Compare DVC experiments (seeds, sweeps): mean ± sd of every accuracy, pooled claim verdicts.

    Experiments whose params are equal except --ignore (default: base.seed and the per-source seeds base.data_seed,
    base.sft_seed, base.eval_seed) form a group; with --group-by only the named
    params define the groups. Writes OUT/compare.md and OUT/compare.json.
    """
    from cotshape.reporting import compare as cmp
    from cotshape.reporting.compare_markdown import write
    from cotshape.reporting.pooling import compare

    dvc_json = cmp.load_exp_show(json_file) if json_file is not None else None
    skipped: list[str] = []
    exps = cmp.collect(repo, dvc_json, workspace=workspace, all_commits=all_commits, skipped=skipped)
    groups = cmp.group(exps, by_exclude=tuple(ignore) if ignore else cmp.SEED_PARAMS, by=group_by or None)
    result = compare(groups, skipped)
    md, _ = write(result, out if out is not None else repo / "compare")
    for g in result["groups"]:
        for w in g["warnings"]:
            typer.echo(f"warning: {g['label']}: {w}", err=True)
    typer.echo(f"compared {len(exps)} experiments in {len(groups)} group(s): {md}", err=True)


@slurm_app.command("submit")
def slurm_submit(
    repo: Annotated[Path, typer.Option(help="the pipeline's repository (dvc.yaml), on a shared "
                                       "filesystem")] = Path("."),
    targets: Annotated[list[str] | None, typer.Option(help="a stage (sft@gsm8k-G) or group (sft) to "
                                                      "run, with its upstream stages (repeatable, or a,b; "
                                                      "default: every stage)")] = None,
    partition: Annotated[str | None, typer.Option(help="sbatch --partition of every job")] = None,
    gpus: Annotated[int | None, typer.Option(help="--gres=gpu:N for every GPU stage (0: none; "
                                             "default: from params.yaml)")] = None,
    cpus_per_task: Annotated[int | None, typer.Option(help="sbatch --cpus-per-task of every job")] = None,
    sbatch_arg: Annotated[list[str] | None, typer.Option(help="one more sbatch argument for every job, "
                                                         "e.g. --sbatch-arg=--time=8:00:00 (repeatable)")] = None,
    dry_run: Annotated[bool, typer.Option(help="print the sbatch commands as a shell script, "
                                          "submit nothing")] = False,
) -> None:
    """Submit one job per stage (`dvc repro --single-item STAGE`), in topological order, each
    with --dependency=afterok on its upstream stages' jobs (cotshape/pipeline/slurm.py)."""
    from cotshape.pipeline.slurm import cmd_submit

    names = [t for arg in targets or [] for t in arg.split(",") if t]  # --targets a,b as well
    cmd_submit(repo, names, partition=partition, gpus=gpus, cpus_per_task=cpus_per_task,
               extra=list(sbatch_arg or []), dry_run=dry_run, echo=typer.echo)


class ExportFormat(str, enum.Enum):
    disk = "disk"
    parquet = "parquet"


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="folder to write: OUT/TASK per task (replaced)")] = Path("export"),
    repo: Annotated[Path, typer.Option(help="the pipeline's repository (params.yaml, data/sets, dvc.lock)")] = Path("."),
    fmt: Annotated[ExportFormat, typer.Option("--format", help="disk: DatasetDict.save_to_disk; "
                                              "parquet: the hub layout data/SPLIT-*.parquet")] = ExportFormat.disk,
    push_to_hub: Annotated[str | None, typer.Option(help="also push each task as a config of this hub "
                                                    "dataset repo (needs network and a token)")] = None,
) -> None:
    """Export the training sets (H, G, W, P, step, mixtures) as a Hugging Face DatasetDict per task,
    with a dataset card (counts, teacher, selection policy, seed, DVC hashes, licenses)."""
    from cotshape.reporting.export import export as run_export

    written = run_export(repo, out, ExportFormat(fmt).value, push_to_hub)
    for task, path in written.items():
        typer.echo(f"{task}: {path}", err=True)


@app.command()
def decontaminate(
    train: Annotated[Path, typer.Option(help="training records (JSONL), the side that is flagged")],
    test: Annotated[Path, typer.Option(help="test records (JSONL)")],
    field: Annotated[str, typer.Option(help="the text field compared")] = "question",
    id_field: Annotated[str, typer.Option(help="the id field of both files")] = "id",
    ngram: Annotated[int, typer.Option(help="word n-gram size (open-r1: 8)")] = 8,
    fuzzy_threshold: Annotated[float, typer.Option(help="fuzz.ratio at or above which a pair is a "
                                                   "near-duplicate, 0-100 (open-thoughts: 95)")] = 95.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as one JSON document")] = False,
) -> None:
    """Flag training records that copy a test record: exact (equal normalised text), a shared word
    n-gram, or fuzz.ratio >= threshold. Prints the flagged count per method and the pairs; exits 0
    whether or not any is flagged."""
    from cotshape.core.errors import InputError
    from cotshape.data.decontaminate import decontaminate_files

    if ngram < 1:
        raise InputError(f"--ngram: must be >= 1, got {ngram}")
    if not 0 <= fuzzy_threshold <= 100:
        raise InputError(f"--fuzzy-threshold: must be in [0, 100], got {fuzzy_threshold}")
    result = decontaminate_files(train, test, field, ngram, fuzzy_threshold, id_field)
    if as_json:
        typer.echo(json.dumps(result, ensure_ascii=False))
        return
    labels = {"exact": "exact (equal normalised text)", "ngram": f"ngram (a shared word {ngram}-gram)",
              "fuzzy": f"fuzzy (fuzz.ratio >= {fuzzy_threshold:g})"}
    width = max(map(len, labels.values()))
    for method in ("exact", "ngram", "fuzzy"):
        typer.echo(f"{labels[method]:<{width}}  {result['by_method'][method]} train record(s) flagged")
    typer.echo(f"{'any method':<{width}}  {result['flagged']} train record(s) flagged")
    if result["pairs"]:
        rows = [("train id", "test id", "method")] + [(str(a), str(b), m) for a, b, m in result["pairs"]]
        w0, w1 = (max(len(r[k]) for r in rows) for k in (0, 1))
        typer.echo("")
        for a, b, m in rows:
            typer.echo(f"{a:<{w0}}  {b:<{w1}}  {m}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; the project's own errors (:class:`~cotshape.core.errors.CotshapeError`)
    become one ``error:`` line and exit status 2; anything else keeps its traceback."""
    from cotshape.core.errors import CotshapeError, configure_logging
    from cotshape.pipeline.stage import report_user_error

    try:  # recent typer vendors click as typer._click; older typer uses click itself
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:
        from click.exceptions import ClickException

        NoArgsIsHelpError = ()  # noqa: N806 - older click prints the help itself

    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()
    try:
        app(args=argv, prog_name="cotshape", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except NoArgsIsHelpError as e:
        typer.echo(e.format_message(), err=True)
        return 0
    except ClickException as e:
        typer.echo(f"error: {e.format_message()}", err=True)
        return 2
    except CotshapeError as e:
        report_user_error(e)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
