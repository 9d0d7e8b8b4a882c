#!/usr/bin/env bash
# The main job: set up .venv, then run the whole pipeline (`dvc repro`) on params.yaml,
# offline, and print the summary table. Extra arguments go to `dvc repro`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
dvc repro "$@"
echo "dvc repro finished in $(( $(date +%s) - start )) s; report: reports/summary.md" >&2
cat reports/summary.md
