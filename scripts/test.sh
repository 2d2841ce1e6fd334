#!/usr/bin/env bash
# The test suite: set up, then the unit/integration tests and every notebook under nbval (smoke parameters).
# Writes what it measured to outputs/test_timings.json (README's cost block reads a copy kept in outputs/reference/).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p outputs
t0=$(date +%s)
.venv/bin/python -m pytest -q tests | tee outputs/.pytest.log
t1=$(date +%s)
# The notebooks write to outputs/smoke (params/smoke.yaml's run_name): start it empty, so results saved by an older
# version of the code are not reused (a result made with other settings is refused by design).
rm -rf outputs/smoke
.venv/bin/python -m pytest -q --nbval-lax --nbval-current-env notebooks | tee outputs/.nbval.log
t2=$(date +%s)
.venv/bin/python - "$((t1 - t0))" "$((t2 - t1))" <<'PY'
import datetime, json, re, sys
from elasticmem_core.core.experiment import code_version, cpu_model, cpu_supports_bf16
last = lambda f: re.sub(r"=+", "", [l for l in open(f).read().splitlines() if " passed" in l][-1]).strip()
json.dump({"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "commit": code_version().get("commit"), "pytest": re.sub(r" in [\d.]+s.*", "", last("outputs/.pytest.log")),
           "pytest_seconds": int(sys.argv[1]), "nbval": re.sub(r" in [\d.]+s.*", "", last("outputs/.nbval.log")),
           "nbval_seconds": int(sys.argv[2]),
           # the timings depend on it: a CPU without native bf16 is ~2x slower in training (docs/running.md)
           "machine": {"cpu": cpu_model(), "cpu_bf16": cpu_supports_bf16()}}, open("outputs/test_timings.json", "w"), indent=1)
print("timings:", open("outputs/test_timings.json").read())
PY
