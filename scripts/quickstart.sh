#!/usr/bin/env bash
# The README's main command: set up from nothing, run the quick pilot study on the embedded
# default model (qwen2.5-coder-0.5b) and write its report to runs/pilot/report/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "$@"
.venv/bin/rllm-study run --preset pilot --quick --out runs/pilot
.venv/bin/rllm-study report runs/pilot --out runs/pilot/report
echo "report: runs/pilot/report/report.html"
