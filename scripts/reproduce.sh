#!/usr/bin/env bash
# The main job: set up, then run every numbered notebook in order through papermill on params/mini.yaml
# (or the params file given as $1) into outputs/<runtime.run_name>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/elasticmem reproduce -p "${1:-params/mini.yaml}"
