"""Run the DVC stage graph on Slurm: one ``sbatch`` job per stage, wired by ``afterok`` dependencies.

    cotshape slurm submit [--repo DIR] [--targets STAGE ...] [--partition P] [--gpus N]
                          [--cpus-per-task C] [--sbatch-arg ARG ...] [--dry-run]

What it does
    Reads the stage graph of the repository with DVC's own API (``dvc.repo.Repo(DIR).index``: every
    ``dvc.yaml`` of the repository, ``foreach``/``matrix`` expanded, so a name is an addressing such
    as ``prepare@gsm8k`` or ``sft@gsm8k-G``), keeps the ``--targets`` and every stage upstream of them
    (all stages without ``--targets``; a group name such as ``sft`` means all of its expansions, as
    with ``dvc repro sft``), orders them topologically (ties in dvc.yaml order) and submits, for each
    stage::

        sbatch --parsable --job-name=cotshape-STAGE --chdir=REPO --output=LOGDIR/STAGE-%j.log \\
               [--partition=P] [--gres=gpu:N] [--cpus-per-task=C] [ARG ...] \\
               [--dependency=afterok:ID1:ID2 --kill-on-invalid-dep=yes] \\
               --wrap 'dvc --wait-for-lock repro --single-item STAGE'

    where ID1, ID2 are the job ids of the stage's direct upstream stages (the ids ``--parsable``
    printed for them). A failed stage cancels the jobs below it (``--kill-on-invalid-dep``). Each job
    re-checks its stage: a stage that is already up to date is a no-op job, so submitting the whole
    graph again only recomputes what changed. Logs go to ``REPO/.dvc/tmp/slurm`` (git-ignored).

``--dry-run`` prints the commands as a shell script instead (``set -e; mkdir -p LOGDIR`` first, then
``JOB_STAGE=$(sbatch ... --dependency=afterok:$JOB_UPSTREAM ...)`` per stage, the placeholders being
the shell variables of the upstream lines: pasting it into a shell on the login node submits the
graph) and runs nothing; it needs no ``sbatch``.

Assumptions
    * A shared filesystem: the repository (its workspace, ``.dvc/cache`` and the ``.venv``) is the
      same path on the login node and on every compute node; jobs ``--chdir`` there. On NFS set
      ``dvc config core.hardlink_lock true`` (DVC's lock files then work across machines).
    * The job's environment is the submitting shell's (sbatch's default ``--export=ALL``): run the
      command with the project's ``.venv/bin`` on PATH so ``dvc`` and ``python`` resolve to it on the
      nodes, with ``HF_HUB_OFFLINE`` etc. as wanted.
    * Stages of one repository run concurrently: DVC holds its repository lock only while it checks
      and records a stage, not while the stage command runs, and ``--wait-for-lock`` makes a job wait
      for that short lock instead of failing. Stages upstream/downstream of each other never overlap
      (``afterok``).

Resources (kept simple; ``--sbatch-arg`` adds anything else to every job, e.g. ``--time=8:00:00``,
``--mem=64G``, ``--account=X``)
    * GPU stages are the groups that load a model: ``sample``, ``paraphrase``, ``degrade``,
      ``closeness``, ``sft``/``sft_mix``/``sft_step`` and ``evaluate*`` (:data:`GPU_GROUPS`). Every
      other stage (``code``, ``models``, ``prepare``, ``merge_samples``, ``verify``, ``select``,
      ``report``) is a CPU job.
    * ``--gpus N`` gives every GPU stage ``--gres=gpu:N`` (``--gpus 0``: all stages CPU jobs).
    * Without ``--gpus`` the repository's ``params.yaml`` decides (:func:`gpus_for`): with
      ``base.device`` ``cuda`` (or ``cuda:K``) an SFT stage gets ``sft.num_processes`` GPUs when
      ``sft.launcher`` is not ``none`` (else 1) and the other GPU stages get
      ``sample.tensor_parallel_size`` GPUs with ``base.backend: vllm`` (else 1); with ``base.device``
      ``cpu`` or ``auto`` (``auto`` cannot be resolved before the job lands on a node) no stage asks
      for a GPU. ``--gres`` is per node: an SFT run over several nodes is
      ``scripts/slurm/sft_multinode.sbatch`` (docs/scale.md), not this command.

Errors (one line, exit status 2, no job submitted): the repository has no ``dvc.yaml`` or DVC cannot
read it, a ``--targets`` name is unknown (the closest names are suggested), ``sbatch`` is not on PATH
(without ``--dry-run``). An ``sbatch`` that fails stops the submission; the error names the jobs
already submitted (``scancel`` them, or let them run).

No stage script imports this module: it is a tool around the pipeline, not part of any stage's code
fingerprint (``python -m cotshape.pipeline.depgraph --check dvc.yaml``).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotshape.core.errors import CotshapeError, InputError, did_you_mean

#: stage groups (the name before ``@``) that load a model and so may ask for GPUs
GPU_GROUPS = frozenset({"sample", "paraphrase", "degrade", "closeness", "sft", "sft_mix", "sft_step",
                        "evaluate", "evaluate_base", "evaluate_mix", "evaluate_step", "evaluate_ckpt"})
SFT_GROUPS = frozenset({"sft", "sft_mix", "sft_step"})
#: the command each job runs, ``{stage}`` replaced by the (shell-quoted) stage name
JOB_COMMAND = "dvc --wait-for-lock repro --single-item {stage}"
LOG_DIR = Path(".dvc") / "tmp" / "slurm"


class SlurmError(CotshapeError):
    """sbatch missing or failing."""


@dataclass
class Job:
    """One stage to submit: its name, the stages it waits for, its GPUs."""

    stage: str
    upstream: list[str] = field(default_factory=list)
    gpus: int = 0


def group_of(stage: str) -> str:
    """``sft`` for ``sft@gsm8k-G``; the name after ``path/dvc.yaml:`` for a stage in a sub-folder."""
    return stage.rsplit(":", 1)[-1].split("@", 1)[0]


def load_graph(repo: str | os.PathLike) -> tuple[list[str], dict[str, list[str]]]:
    """The repository's stages with a command, in dvc.yaml order, and each one's direct upstream
    stages (the stages whose outs it depends on), read with DVC's API."""
    root = Path(repo)
    if not (root / "dvc.yaml").is_file():
        raise InputError(f"{root}: no dvc.yaml (not a DVC pipeline repository)")
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as r:
            index = r.index
            graph = index.graph
            stages = [s for s in index.stages if s.cmd]

            def name(stage: Any) -> str:  # DVC's addressing, relative to the repository root
                rel = os.path.relpath(stage.path, r.root_dir)
                return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"

            names = [name(s) for s in stages]
            upstream = {name(s): sorted({name(d) for d in graph.successors(s) if d.cmd},
                                        key=names.index) for s in stages}
    except DvcException as e:
        msg = " ".join(str(e).split())
        raise InputError(f"{root}: DVC cannot read the pipeline: {msg}") from e
    return names, upstream


def select(names: Sequence[str], upstream: dict[str, list[str]],
           targets: Sequence[str] | None) -> list[str]:
    """The stages to submit, in topological order (ties in dvc.yaml order): ``targets`` (names or
    group names) and everything upstream of them, or every stage when ``targets`` is empty."""
    if targets:
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(group_of(n), []).append(n)
        wanted: list[str] = []
        for t in targets:
            if t in upstream:
                wanted.append(t)
            elif t in groups:
                wanted.extend(groups[t])
            else:
                hint = did_you_mean(t, [*names, *groups])
                hint = f"; {hint}" if hint else ""
                raise InputError(f"--targets: unknown stage {t!r}{hint}")
        keep: set[str] = set()
        todo = list(wanted)
        while todo:
            s = todo.pop()
            if s not in keep:
                keep.add(s)
                todo.extend(upstream[s])
    else:
        keep = set(names)
    pos = {n: i for i, n in enumerate(names)}
    order: list[str] = []
    done: set[str] = set()
    pending = sorted(keep, key=pos.__getitem__)
    while pending:  # Kahn's algorithm, always taking the earliest ready stage in dvc.yaml order
        ready = next(s for s in pending if all(u in done for u in upstream[s] if u in keep))
        order.append(ready)
        done.add(ready)
        pending.remove(ready)
    return order


def _load_params(repo: Path) -> dict[str, Any]:
    p = repo / "params.yaml"
    if not p.is_file():
        return {}
    import yaml

    data = yaml.safe_load(p.read_text()) or {}
    return data if isinstance(data, dict) else {}


def gpus_for(stage: str, params: dict[str, Any], gpus: int | None) -> int:
    """GPUs of one job: ``gpus`` (``--gpus``) for a GPU stage when given, else from params (module
    docstring); 0 for a CPU stage."""
    group = group_of(stage)
    if group not in GPU_GROUPS:
        return 0
    if gpus is not None:
        return gpus
    base = params.get("base") or {}
    device = str(base.get("device", "auto"))
    if not (device == "cuda" or re.fullmatch(r"cuda:\d+", device)):
        return 0
    if group in SFT_GROUPS:
        sft = params.get("sft") or {}
        return int(sft.get("num_processes", 1)) if sft.get("launcher", "none") != "none" else 1
    if base.get("backend") == "vllm":
        return int((params.get("sample") or {}).get("tensor_parallel_size", 1))
    return 1


def plan(repo: str | os.PathLike, targets: Sequence[str] | None = None,
         gpus: int | None = None) -> list[Job]:
    """The jobs to submit for ``repo``, in submission order."""
    root = Path(repo)
    names, upstream = load_graph(root)
    order = select(names, upstream, targets)
    params = _load_params(root)
    keep = set(order)
    return [Job(s, [u for u in upstream[s] if u in keep], gpus_for(s, params, gpus)) for s in order]


def _var(stage: str) -> str:
    """The shell variable of a stage's job id in the dry-run script: ``JOB_sft_gsm8k_G``."""
    return "JOB_" + re.sub(r"\W", "_", stage)


def sbatch_argv(job: Job, repo: Path, dep_ids: Sequence[str], *, partition: str | None = None,
                cpus_per_task: int | None = None, extra: Sequence[str] = (),
                log_dir: Path | None = None) -> list[str]:
    """The sbatch command line of one job (``repo`` absolute; ``dep_ids`` the upstream job ids)."""
    logs = log_dir or repo / LOG_DIR
    safe = re.sub(r"[^\w.@-]", "_", job.stage)
    argv = ["sbatch", "--parsable", f"--job-name=cotshape-{job.stage}", f"--chdir={repo}",
            f"--output={logs / safe}-%j.log"]
    if partition:
        argv.append(f"--partition={partition}")
    if job.gpus:
        argv.append(f"--gres=gpu:{job.gpus}")
    if cpus_per_task:
        argv.append(f"--cpus-per-task={cpus_per_task}")
    argv.extend(extra)
    if dep_ids:
        argv += ["--dependency=afterok:" + ":".join(dep_ids), "--kill-on-invalid-dep=yes"]
    argv += ["--wrap", JOB_COMMAND.format(stage=shlex.quote(job.stage))]
    return argv


def dry_run_script(jobs: Sequence[Job], repo: Path, **kw: Any) -> list[str]:
    """The lines ``--dry-run`` prints: a shell script that submits the graph."""
    logs = kw.get("log_dir") or repo / LOG_DIR
    lines = ["set -e", f"mkdir -p {shlex.quote(str(logs))}"]
    for job in jobs:
        argv = sbatch_argv(job, repo, [f"${_var(u)}" for u in job.upstream], **kw)
        # quote each word, but leave the $JOB_ placeholders of the dependency expandable
        words = [f'"{a}"' if a.startswith("--dependency=") else shlex.quote(a) for a in argv]
        var = _var(job.stage)  # --parsable prints "ID" or "ID;CLUSTER": keep the ID
        lines.append(f"{var}=$({' '.join(words)}); {var}=${{{var}%%;*}}")
    return lines


def submit(jobs: Sequence[Job], repo: Path, *, echo: Callable[[str], None] = print,
           **kw: Any) -> dict[str, str]:
    """Submit ``jobs`` in order with the real ``sbatch``; the job id of each stage."""
    if shutil.which("sbatch") is None:
        raise SlurmError("sbatch not found on PATH (run on a Slurm login node, or use --dry-run)")
    logs = kw.get("log_dir") or repo / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    ids: dict[str, str] = {}
    for job in jobs:
        argv = sbatch_argv(job, repo, [ids[u] for u in job.upstream], **kw)
        r = subprocess.run(argv, capture_output=True, text=True)
        out = r.stdout.strip().split(";")[0]
        if r.returncode != 0 or not out.isdigit():
            why = " ".join((r.stderr or r.stdout).split()) or f"exit status {r.returncode}"
            done = f" (already submitted: {' '.join(ids.values())})" if ids else ""
            raise SlurmError(f"sbatch failed for stage {job.stage}: {why}{done}")
        ids[job.stage] = out
        after = f" after {','.join(ids[u] for u in job.upstream)}" if job.upstream else ""
        gres = f" gpu:{job.gpus}" if job.gpus else ""
        echo(f"{out}\t{job.stage}{gres}{after}")
    return ids


def cmd_submit(repo: str | os.PathLike = ".", targets: Sequence[str] | None = None, *,
               partition: str | None = None, gpus: int | None = None, cpus_per_task: int | None = None,
               extra: Sequence[str] = (), dry_run: bool = False,
               echo: Callable[[str], None] = print) -> dict[str, str]:
    """``cotshape slurm submit``: plan, then print (``dry_run``) or submit. Returns stage -> job id
    (the ``$JOB_`` placeholders on a dry run)."""
    if gpus is not None and gpus < 0:
        raise InputError(f"--gpus: must be >= 0, got {gpus}")
    if cpus_per_task is not None and cpus_per_task < 1:
        raise InputError(f"--cpus-per-task: must be >= 1, got {cpus_per_task}")
    root = Path(repo).resolve()
    jobs = plan(root, targets, gpus)
    kw = {"partition": partition, "cpus_per_task": cpus_per_task, "extra": list(extra)}
    if dry_run:
        for line in dry_run_script(jobs, root, **kw):
            echo(line)
        return {j.stage: f"${_var(j.stage)}" for j in jobs}
    return submit(jobs, root, echo=echo, **kw)
