#!/usr/bin/env bash
# The device check for a machine with a GPU (one command, under 8 minutes on one GPU): 10 GRPO steps of the paper
# path in bfloat16 on CUDA with the shipped SmolLM2-135M, left-padding logits vs batch-1, seconds and peak memory
# per step. The test suite runs the same script on CPU (tests/test_paper_path.py), so it cannot rot.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python tests/benchmarks/gpu_check.py --device cuda "$@"
.venv/bin/python tests/benchmarks/gpu_check.py --device cuda --per-rollout --steps 3 "$@"
