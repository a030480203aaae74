#!/usr/bin/env bash
# The README's first command: set up both environments, start the local CPU ComfyUI, render the example manifest
# through Dagster with the preview workflows, and say where the videos and the catalog are.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export DAGSTER_HOME="${DAGSTER_HOME:-$PWD/var/dagster_home}"
mkdir -p "$DAGSTER_HOME"
cp dagster.yaml "$DAGSTER_HOME/dagster.yaml"
export COMFYUI_URLS="${COMFYUI_URLS:-http://127.0.0.1:8188}"

.venv/bin/python -m examples.make_media  # a module: its media helpers live in tests/fixtures/synth.py
# Already running from an earlier demo? Reuse it.
.venv/bin/infinitetalk comfyui status --workdir var/comfyui >/dev/null 2>&1 \
  || .venv/bin/infinitetalk comfyui start --port 8188 --workdir var/comfyui
# Render steps in flight: three per worker (one rendering, one queued on the worker, one preparing; dagster.yaml).
workers=$(tr ',' '\n' <<<"$COMFYUI_URLS" | grep -c .)
.venv/bin/dagster instance concurrency set gpu_render "$((3 * workers))" >/dev/null
.venv/bin/python scripts/demo.py
echo "Open the UI with: DAGSTER_HOME=$DAGSTER_HOME .venv/bin/dagster dev -w workspace.yaml"
echo "Stop the local ComfyUI with: .venv/bin/infinitetalk comfyui stop --workdir var/comfyui"
