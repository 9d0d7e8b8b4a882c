"""models: materialise the teacher and the student as plain Hugging Face folders (DVC outs).

When teacher and student are the same spec (e.g. SmolLM2 teaching itself), the model is converted once
and the folder copied: the conversion (GGUF -> safetensors plus a logits check) is the slow part.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from cotshape.core.records import atomic_folder
from cotshape.pipeline.stage import dvc_params, params, stage_main


def copy_dir(src: Path, dst: Path) -> None:
    """Copy a folder to ``dst`` atomically (:func:`~cotshape.core.records.atomic_folder`); the
    copy gets ``src``'s permission bits, as :func:`shutil.copytree` gives them."""
    with atomic_folder(dst) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teacher-out", required=True)
    ap.add_argument("--student-out", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.core.models import materialize
    from cotshape.tracking.stage_run import begin_stage

    begin_stage("models", p, sections=dvc_params("models"), outputs=[args.teacher_out, args.student_out])
    materialize(p.base.teacher, args.teacher_out)
    if p.base.student == p.base.teacher:
        copy_dir(Path(args.teacher_out), Path(args.student_out))
    else:
        materialize(p.base.student, args.student_out)


if __name__ == "__main__":
    raise SystemExit(main())
