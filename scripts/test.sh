#!/usr/bin/env bash
# The test suite: set up, then the unit/integration tests and every notebook under nbval (smoke parameters).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q tests
# The notebooks write to outputs/smoke (params/smoke.yaml's run_name): start it empty, so results saved by an older
# version of the code are not reused (a result made with other settings is refused by design).
rm -rf outputs/smoke
.venv/bin/python -m pytest -q --nbval-lax --nbval-current-env notebooks
