"""degrade@TASK: flawed mixtures (fraction p of completely flawed CoTs) and the step-degraded set."""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from cotshape.config import set_name
from cotshape.pipeline import load_backend, params, stage_main
from cotshape.records import (
    read_ids,
    read_jsonl,
    read_problems,
    restrict_to_ids,
    write_json,
    write_jsonl,
)
from cotshape.tasks import get_task


def model_flawed(task, good, by_id, teacher_dir, p) -> dict[str, str]:
    """Flawed CoTs from the teacher prompted to reason wrongly, kept only if verified wrong."""
    from cotshape.degrade import flawed_from_model
    from cotshape.generation.base import SamplingParams

    if not good:
        return {}
    backend = load_backend(p, teacher_dir, p.sample.batch_size)
    sp = SamplingParams(n=4, temperature=1.0, top_p=p.sample.top_p, max_new_tokens=p.sample.max_new_tokens)

    def generate(problem_ids, seeds):
        outs = backend.generate([task.flawed_messages(by_id[pid]) for pid in problem_ids], sp, seeds=seeds)
        return [[c.text for c in cands] for cands in outs]

    def is_wrong(pid, text):
        v = task.verify(by_id[pid], text)
        return v.parsed and not v.correct

    return flawed_from_model(good, generate, is_wrong, p.base.seed)


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--task", required=True)
    ap.add_argument("--problems", required=True)
    ap.add_argument("--good", required=True, help="the correct CoTs (degrade.base_set: G, H or P)")
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--mix-dir", required=True)
    ap.add_argument("--step-out", required=True)
    ap.add_argument("--ids", help="select's ids.json: build only from the problems every set is compared on")
    ap.add_argument("--metrics", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.degrade import flawed_from_corruption, make_mixtures, make_step_degraded
    d = p.degrade
    task = get_task(args.task)
    by_id = {x["id"]: x for x in read_problems(args.problems)}
    good = read_jsonl(args.good, required=("problem_id", "prompt", "completion"))
    if args.ids:
        good = restrict_to_ids(good, read_ids(args.ids))
    if d.flawed_source == "model":
        flawed = model_flawed(task, good, by_id, args.teacher, p)
    else:
        flawed = flawed_from_corruption(good, lambda pid, text: not task.verify(by_id[pid], text).correct, p.base.seed)
    mixtures, metrics = make_mixtures(good, flawed, d.flawed_fractions, p.base.seed)

    # the mixture folder is one DVC out: build it aside, then swap it in whole
    mix_dir = Path(args.mix_dir)
    mix_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in mix_dir.parent.glob(".mix.*"):  # left by a killed run (DVC runs one degrade per task)
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mix.", dir=mix_dir.parent))
    try:
        for frac, recs in mixtures.items():
            name = set_name(frac)
            write_jsonl(tmp / f"{name}.jsonl", [dict(r, set=name, id=f"{task.name}-{name}-{r['problem_id']}") for r in recs])
        if mix_dir.exists():
            shutil.rmtree(mix_dir)
        tmp.rename(mix_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    step = make_step_degraded(good, d.step_k, p.base.seed)
    write_jsonl(args.step_out, [dict(r, set="step", id=f"{task.name}-step-{r['problem_id']}") for r in step])
    metrics["step_k"] = d.step_k
    metrics["flawed_source"] = d.flawed_source
    write_json(args.metrics, metrics)
    print(f"{args.task}: {len(good)} correct CoTs, {len(flawed)} flawed available")


if __name__ == "__main__":
    raise SystemExit(main())
