#!/usr/bin/env bash
# Set up .venv and run the whole test suite (slow tests included). Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m "not slow"` for the fast ones only.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS=dev bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PATH="$PWD/.venv/bin:$PATH"
# pytest exits 5 when it collected no test: that is a failure here, like any non-zero code
exec .venv/bin/python -m pytest -q "$@"
