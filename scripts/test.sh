#!/usr/bin/env bash
# The README's test command: set up (no-op when done), lint, then run the whole suite against real local
# ComfyUI, S3 and Dagster instances that the tests start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q -p no:cacheprovider --durations=30 "$@"
