"""The ``cotshape`` command line (typer).

    cotshape sample --task gsm8k --problems train.jsonl --model smollm2-135m-instruct --k 4 \\
        --max-new-tokens 160 --temperature 0.8 --seed 0 --out samples.jsonl [--shard 0/2]
    cotshape verify --task gsm8k --problems train.jsonl --in samples.jsonl --out verified.jsonl
    cotshape models materialize SPEC OUT_DIR
    cotshape tasks list
    cotshape tasks show gsm8k --source offline -n 3
    cotshape preset ...            (see cotshape.presets)

Bad input (a malformed record file, an unknown task, model spec or parameter) prints one line
``error: ...`` to stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Shape of Thought experiments: sample, verify, train, evaluate.")
models_app = typer.Typer(no_args_is_help=True, help="Model folders: materialise a spec into a plain HF folder.")
tasks_app = typer.Typer(no_args_is_help=True, help="The reasoning tasks.")
app.add_typer(models_app, name="models")
app.add_typer(tasks_app, name="tasks")

DEFAULT_MODEL_CACHE = Path(os.environ.get("COTSHAPE_CACHE", Path.home() / ".cache" / "cotshape")) / "models"


def model_folder(spec: str, cache_dir: str | os.PathLike | None = None) -> str:
    """The folder or hub id to load for ``spec``: an alias is materialised once into
    ``cache_dir`` (the pipeline instead materialises it as a DVC out and passes the folder)."""
    from cotshape.models import materialize, resolve_spec

    ms = resolve_spec(spec)
    if ms.kind != "alias":
        return ms.id
    folder = Path(cache_dir or DEFAULT_MODEL_CACHE) / ms.id
    if not (folder / "config.json").exists():
        typer.echo(f"materialising {ms.id} into {folder} (once)", err=True)
        materialize(ms.id, folder)
    return str(folder)


@app.command()
def sample(
    task: Annotated[str, typer.Option(help="task name (cotshape tasks list)")],
    problems: Annotated[Path, typer.Option(help="problem file (JSONL/Parquet)")],
    model: Annotated[str, typer.Option(help="model spec: hub id[@rev], local folder, or alias")],
    out: Annotated[Path, typer.Option(help="output JSONL (OUT.partial holds resumable progress)")],
    k: Annotated[int, typer.Option(help="samples per problem")] = 4,
    max_new_tokens: Annotated[int, typer.Option()] = 256,
    temperature: Annotated[float, typer.Option()] = 0.8,
    top_p: Annotated[float, typer.Option()] = 1.0,
    seed: Annotated[int, typer.Option()] = 0,
    stop: Annotated[list[str] | None, typer.Option(help="stop string (repeatable)")] = None,
    shard: Annotated[str | None, typer.Option(help="I/N: sample problems with index % N == I")] = None,
    backend: Annotated[str, typer.Option(help="transformers | vllm")] = "transformers",
    batch_size: Annotated[int, typer.Option(help="sequences decoded together (transformers)")] = 128,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
    dtype: Annotated[str, typer.Option(help="auto | float32 | bfloat16 | float16")] = "auto",
    tensor_parallel_size: Annotated[int, typer.Option(help="GPUs per model (vllm)")] = 1,
    chunk_size: Annotated[int, typer.Option(help="problems per backend call")] = 256,
    model_cache: Annotated[Path | None, typer.Option(help="where an alias is materialised")] = None,
    limit: Annotated[int | None, typer.Option(help="only the first N problems")] = None,
) -> None:
    """Sample K chains of thought per problem from a teacher (resumable, shardable)."""
    from cotshape.generation import get_backend
    from cotshape.generation.base import SamplingParams
    from cotshape.records import read_problems
    from cotshape.sampling import parse_shard, run_sampling
    from cotshape.tasks import get_task

    t = get_task(task)
    sh = parse_shard(shard)
    if k < 1:
        raise ValueError(f"--k must be >= 1, got {k}")
    params = SamplingParams(n=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                            stop=list(stop or []), seed=seed)
    probs = read_problems(problems)
    if limit is not None:
        probs = probs[:limit]
    if not probs:
        raise ValueError(f"{problems}: no problems to sample (the file is empty)")
    folder = model_folder(model, model_cache)
    kw = {"tensor_parallel_size": tensor_parallel_size, "seed": seed} if backend == "vllm" else {}
    be = get_backend(backend, folder, device=device, dtype=dtype, batch_size=batch_size, **kw)
    n = run_sampling(t, probs, be, k, params, out, teacher=model, shard=sh, chunk_size=chunk_size)
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
    from cotshape.verify import verify_file

    summary = verify_file(task, problems, in_path, out, workers=workers)
    typer.echo(json.dumps(summary, sort_keys=True), err=True)


@models_app.command("materialize")
def models_materialize(
    spec: Annotated[str, typer.Argument(help="hub id[@rev], local folder, or alias")],
    out_dir: Annotated[Path, typer.Argument(help="folder to write (replaced atomically)")],
) -> None:
    """Write SPEC as a plain Hugging Face folder (safetensors, tokenizer, chat template)."""
    from cotshape.models import materialize

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


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []})
def preset(ctx: typer.Context) -> None:
    """Paper-scale presets: cotshape preset list | show NAME | apply NAME | exp NAME (see --help)."""
    from cotshape.presets import cli_main

    code = cli_main(list(ctx.args))
    if code:
        raise typer.Exit(code)


def _error_types() -> tuple[type[BaseException], ...]:
    from cotshape.records import RecordError

    types: list[type[BaseException]] = [RecordError, ValueError, FileNotFoundError, ImportError]
    try:
        from cotshape.config import ParamsError

        types.append(ParamsError)
    except ImportError:
        pass
    return tuple(types)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app; known errors become one ``error:`` line and exit status 2."""
    try:  # recent typer vendors click as typer._click; older typer uses click itself
        from typer._click.exceptions import ClickException, NoArgsIsHelpError
    except ImportError:
        from click.exceptions import ClickException

        NoArgsIsHelpError = ()  # noqa: N806 - older click prints the help itself

    argv = list(sys.argv[1:] if argv is None else argv)
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
    except _error_types() as e:
        typer.echo(f"error: {e}", err=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
