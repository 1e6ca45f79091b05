#!/usr/bin/env bash
# The project's virtual environment (.venv) with the pinned Python dependencies, the
# test extras included (the demo runs the e2e harness's cluster: perf.cluster). Safe to
# run again: a stamp of pyproject.toml's hash skips a finished install.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { echo "[install-python-env] $*" >&2; }

py=${PYTHON:-python3}
command -v "$py" >/dev/null || { log "FAILED: no $py on PATH (need Python >= 3.11)"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$py" -m venv .venv || { log "FAILED: python -m venv (retry: rm -rf .venv && bash hack/install-python-env.sh)"; exit 1; }
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing Python dependencies"
  .venv/bin/pip install -q --upgrade pip >&2
  .venv/bin/pip install -q -e '.[test]' >&2 || { log "FAILED: pip install (retry: bash hack/install-python-env.sh)"; exit 1; }
  touch "$stamp"
fi
