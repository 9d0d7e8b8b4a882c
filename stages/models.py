"""models: materialise the teacher and the student as plain Hugging Face folders (DVC outs)."""

from __future__ import annotations

import argparse

from cotshape.pipeline import params, stage_main


@stage_main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teacher-out", required=True)
    ap.add_argument("--student-out", required=True)
    args = ap.parse_args(argv)
    p = params()
    from cotshape.models import materialize
    materialize(p.base.teacher, args.teacher_out)
    materialize(p.base.student, args.student_out)


if __name__ == "__main__":
    raise SystemExit(main())
