#!/usr/bin/env bash
# Installs everything a fresh machine needs: system media tools, the pipeline venv (.venv, no torch) and the
# separate local ComfyUI venv (torch; ComfyUI runs with --cpu). Safe to run again: each step is a no-op when done.
set -euo pipefail
cd "$(dirname "$0")/.."

# Python 3.11 with venv support (Debian splits ensurepip into python3.11-venv).
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
need_apt=()
"$PYTHON" -c 'import ensurepip' 2>/dev/null || need_apt+=(python3.11-venv)
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
command -v ffprobe >/dev/null || need_apt+=(ffmpeg)
# PostgreSQL's server binaries for tests/test_postgres.py (its fixture starts a throwaway server). Debian keeps
# initdb off PATH, under /usr/lib/postgresql/<version>/bin.
command -v initdb >/dev/null || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
# Headless Chromium for tests/test_ui_browser.py and benchmarks/scale_ui.py (Playwright's own browser download is not used).
command -v chromium >/dev/null || need_apt+=(chromium)
if ((${#need_apt[@]})); then
  echo "==> apt-get install ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
  || { echo "Python 3.11 is needed (found $("$PYTHON" --version)); set PYTHON=/path/to/python3.11" >&2; exit 1; }
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  "$PYTHON" -m venv .venv
fi
echo "==> installing the pipeline into .venv"
.venv/bin/python -m pip install -q --disable-pip-version-check -c constraints/pipeline.txt -e ".[dev]"

echo "==> installing the local ComfyUI (separate venv with torch, run with --cpu) with the locked worker nodes"
# The InfiniteTalk custom nodes at their locked commits: from the offline archives where they exist (CI and these
# machines reach no GitHub), else cloned with git.
NODE_SOURCES="${INFINITETALK_NODE_SOURCES:-../shared/vendor/comfyui-custom-nodes}"
if [ -d "$NODE_SOURCES" ]; then
  .venv/bin/infinitetalk comfyui install --profile infinitetalk --node-sources "$NODE_SOURCES"
else
  .venv/bin/infinitetalk comfyui install --profile infinitetalk
fi
