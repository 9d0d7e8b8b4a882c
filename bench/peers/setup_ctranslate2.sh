#!/usr/bin/env bash
# CTranslate2 for bench/peers/bench_peers.py: the wheel into .peers/ct2 (not into .venv: it is a
# benchmark peer, not a dependency), then SmolLM2-135M-Instruct (the offline alias, materialised
# into ~/.cache/cotshape/smollm2-135m-instruct) converted with its TransformersConverter, which
# runs on the project's transformers and torch, to bfloat16 and int8 weights.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
PY=.venv/bin/python
[ -x "$PY" ] || { echo "error: .venv missing: run EXTRAS=dev bash scripts/setup.sh first" >&2; exit 2; }
if [ ! -d .peers/ct2/ctranslate2 ]; then
  "$PY" -m pip install -q --target .peers/ct2 --no-deps "ctranslate2==4.8.5"
fi
PYTHONPATH=.peers/ct2 "$PY" - <<'PYEOF'
import os
from pathlib import Path

from ctranslate2.converters import TransformersConverter

from cotshape.core.models import materialize

src = Path(os.path.expanduser("~/.cache/cotshape/smollm2-135m-instruct"))
if not (src / "config.json").exists():
    materialize("smollm2-135m-instruct", src)
for q in ("bfloat16", "int8"):
    out = Path(f".peers/ct2-models/smollm2-{q}")
    if not (out / "model.bin").exists():
        TransformersConverter(str(src)).convert(str(out), quantization=q, force=True)
    print(f"{out}: ready")
PYEOF
echo "ctranslate2 set up in $(( $(date +%s) - start )) s"
