#!/usr/bin/env bash
# The prepared GPU check (bench/gpu_check.py): generation, a few SFT steps and a greedy
# evaluation on one GPU, offline, in a few minutes; prints a table last.
#
#   bench/gpu_check.sh [--model DIR] [--out DIR] [any other bench/gpu_check.py option]
#   bench/gpu_check.sh --device cpu --tiny        # the CPU smoke test
#
# Needs python3 with torch, transformers and accelerate. The repository is used in place (put
# on PYTHONPATH; no install). Optional packages the machine lacks (TRL and datasets, for the
# stock-trainer SFT path) are installed from a wheelhouse without network, if one is given:
#   COTSHAPE_WHEELHOUSE=DIR bench/gpu_check.sh     (default: .whl/ in the repo root, if present)
# make one on a machine with network with:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#       trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 transformers==5.24.0
# (the project needs transformers>=5.20: a GPU image with an older one needs its wheel too).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

missing=$("$PY" - <<'PYEOF'
import importlib
print(" ".join(m for m in ("torch", "transformers", "accelerate") if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
    echo "gpu_check: required packages missing: $missing (need torch, transformers, accelerate)" >&2
    exit 2
fi

wheels=${COTSHAPE_WHEELHOUSE:-.whl}
if [ -d "$wheels" ] && ls "$wheels"/*.whl >/dev/null 2>&1; then
    site=$(mktemp -d /tmp/cotshape-site.XXXXXX)
    echo "gpu_check: installing $(ls "$wheels"/*.whl | wc -l) wheels from $wheels into $site (no network, no deps)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "$PY" bench/gpu_check.py "$@"
