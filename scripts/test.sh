#!/usr/bin/env bash
# Run the test suite (fast tests by default; add -m slow for the long ones).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m pytest -q "$@"
