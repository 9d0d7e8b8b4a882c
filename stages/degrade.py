"""degrade@TASK: flawed mixtures (fraction p of completely flawed CoTs) and the step-degraded sets
(one per degrade.step_k: STEP_DIR/step-K.jsonl, set name step-K)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cotshape.core.config import set_name
from cotshape.core.records import (
    atomic_folder,
    read_ids,
    read_jsonl,
    read_problems,
    restrict_to_ids,
    write_json,
    write_jsonl,
)
from cotshape.pipeline.stage import (
    dvc_params,
    generate_with_progress,
    load_backend,
    params,
    stage_main,
)
from cotshape.tasks import get_task


def model_flawed(task, good, by_id, teacher_dir, p) -> tuple[dict[str, str], str | None]:
    """Flawed CoTs from the teacher prompted to reason wrongly, kept only if verified wrong;
    with the name of the backend that generated them (None: nothing to generate)."""
    from cotshape.data.degrade import flawed_from_model
    from cotshape.generation.base import SamplingParams

    if not good:
        return {}, None
    backend = load_backend(p, teacher_dir, p.sample.batch_size)
    sp = SamplingParams(n=4, temperature=1.0, top_p=p.sample.top_p, max_new_tokens=p.sample.max_new_tokens)

    def generate(problem_ids, seeds):
        outs = generate_with_progress(backend, [task.flawed_messages(by_id[pid]) for pid in problem_ids], sp,
                                      f"flawed CoTs {task.name}", seeds=seeds)
        return [[c.text for c in cands] for cands in outs]

    def is_wrong(pid, text):
        v = task.verify(by_id[pid], text)
        return v.parsed and not v.correct

    return flawed_from_model(good, generate, is_wrong, p.base.seed_of("data")), backend.name


def write_folder(folder: Path, files: dict[str, list[dict]]) -> None:
    """Write ``{name: records}`` as ``folder/NAME.jsonl``, replacing the folder whole (it is one
    DVC out): built aside in ``.FOLDER.*``, then renamed; leftovers of a killed run are removed."""
    with atomic_folder(folder) as tmp:
        for name, recs in files.items():
            write_jsonl(tmp / f"{name}.jsonl", recs)


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--good", required=True, help="the correct CoTs (degrade.base_set: G, H or P)")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--mix-dir", required=True)
    ap.add_argument("--step-dir", required=True, help="folder of the step-degraded sets: step-K.jsonl per degrade.step_k")
    ap.add_argument("--ids", help="select's ids.json: build only from the problems every set is compared on")
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.core.artifacts import step_set_name
    from cotshape.data.degrade import (
        flawed_from_corruption,
        make_mixtures,
        make_step_degraded,
    )
    d = p.degrade
    task = get_task(args.task)
    from cotshape.tracking.stage_run import begin_stage, head_jsonl

    run = begin_stage("degrade", p, task=args.task, tags={"sets": "mix,step", "base_set": d.base_set},
                      sections=dvc_params("degrade"),
                      inputs=[args.problems, args.good, *([args.ids] if args.ids else []),
                              *([args.teacher] if d.flawed_source == "model" else [])],
                      outputs=[args.mix_dir, args.step_dir, args.metrics], datasets={args.good: "base_set"})
    by_id = {x["id"]: x for x in read_problems(args.problems)}
    good = read_jsonl(args.good, required=("problem_id", "prompt", "completion"))
    if args.ids:
        good = restrict_to_ids(good, read_ids(args.ids))
    backend = None
    if d.flawed_source == "model":
        flawed, backend = model_flawed(task, good, by_id, args.teacher, p)
    else:
        flawed = flawed_from_corruption(good, lambda pid, text: not task.verify(by_id[pid], text).correct, p.base.seed_of("data"),
                                        task=task, problems=by_id)
    mixtures, metrics = make_mixtures(good, flawed, d.flawed_fractions, p.base.seed_of("data"))
    mixes = {}
    for frac, recs in mixtures.items():
        name = set_name(frac)
        mixes[name] = [dict(r, set=name, id=f"{task.name}-{name}-{r['problem_id']}") for r in recs]
    write_folder(Path(args.mix_dir), mixes)
    steps = {}
    for k in d.step_k:
        name = step_set_name(k)
        steps[name] = [dict(r, set=name, id=f"{task.name}-{name}-{r['problem_id']}")
                       for r in make_step_degraded(good, k, p.base.seed_of("data"), task=task, problems=by_id)]
    write_folder(Path(args.step_dir), steps)
    metrics["step_k"] = list(d.step_k)
    metrics["step_sets"] = list(steps)
    # a CoT with fewer reasoning steps than k gets all of them corrupted: the same CoT as at a smaller k
    metrics["fewer_steps_than_k"] = {name: sum(r["degraded_steps"] < k for r in steps[name])
                                     for k, name in zip(d.step_k, steps, strict=True)}
    metrics["flawed_source"] = d.flawed_source
    metrics["backend"] = backend  # the generation backend of model-written flawed CoTs (None: no model ran)
    write_json(args.metrics, metrics)
    print(f"{args.task}: {len(good)} correct CoTs, {len(flawed)} flawed available")
    run.log_metrics(metrics)
    for path in [*sorted(Path(args.mix_dir).glob("*.jsonl")), *sorted(Path(args.step_dir).glob("*.jsonl"))]:
        run.log_generations(head_jsonl(path), set=path.stem)


if __name__ == "__main__":
    raise SystemExit(main())
