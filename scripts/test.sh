#!/usr/bin/env bash
# The test suite: set up, then the unit/integration tests and every notebook under nbval (smoke parameters).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest -q tests
.venv/bin/python -m pytest -q --nbval-lax --nbval-current-env notebooks
