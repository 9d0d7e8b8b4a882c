#!/usr/bin/env bash
# OpenVINO GenAI for bench/peers/bench_peers.py, in its own venv (.peers/ov): openvino-genai to run,
# optimum-intel[openvino] to export SmolLM2-135M-Instruct (the offline alias) to OpenVINO IR with
# fp16 and int8 weights (plus the tokenizer IRs that LLMPipeline needs).
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
[ -x .venv/bin/python ] || { echo "error: .venv missing: run EXTRAS=dev bash scripts/setup.sh first" >&2; exit 2; }
[ -x .peers/ov/bin/python ] || python3.11 -m venv .peers/ov
.peers/ov/bin/python -m pip install -q "torch==2.13.0"
.peers/ov/bin/python -m pip install -q openvino-genai "optimum-intel[openvino]"
HF=~/.cache/cotshape/smollm2-135m-instruct
if [ ! -f "$HF/config.json" ]; then
  .venv/bin/python -c "from cotshape.core.models import materialize; materialize('smollm2-135m-instruct', '$HF')"
fi
for w in fp16 int8; do
  out=.peers/ov-models/smollm2-$w
  if [ ! -f "$out/openvino_model.xml" ]; then
    .peers/ov/bin/optimum-cli export openvino --model "$HF" --task text-generation-with-past --weight-format "$w" "$out.partial"
    rm -rf "$out" && mv "$out.partial" "$out"
  fi
done
.peers/ov/bin/python -c "import openvino_genai as g; print('openvino-genai', g.__version__)"
echo "OpenVINO GenAI set up in $(( $(date +%s) - start )) s"
