#!/usr/bin/env bash
# Fetches the Gateway API and Gateway API Inference Extension CRDs the e2e tests install,
# from the upstream release sources (their Go modules), into a versioned cache directory.
# Prints the directory on stdout; everything else goes to stderr. Safe to run again: a
# finished directory (stamp file) is reused as it is.
#
#   bash hack/fetch-gateway-crds.sh          # fetch if missing, print the directory
#   bash hack/fetch-gateway-crds.sh --dir    # print the directory only (tests use it)
#
# Environment: OPENMODEL_CACHE (default ~/.cache/openmodel).
set -euo pipefail

GATEWAY_API_VERSION=v1.6.3
# v1.0.0 is the first release with InferencePool in inference.networking.k8s.io/v1.
INFERENCE_EXTENSION_VERSION=v1.6.0

cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
dir="$cache/gateway-crds/gateway-api-$GATEWAY_API_VERSION-inference-extension-$INFERENCE_EXTENSION_VERSION"
stamp="$dir/.openmodel-complete"
log() { echo "[fetch-gateway-crds] $*" >&2; }
fail() { log "FAILED at step '$1'. Retry: rm -rf '$dir' && bash hack/fetch-gateway-crds.sh"; exit 1; }

if [ "${1:-}" = "--dir" ]; then
  echo "$dir"
  exit 0
fi
if [ -f "$stamp" ]; then
  echo "$dir"
  exit 0
fi

command -v go >/dev/null 2>&1 || { log "FAILED: go is not on PATH (need Go >= 1.26)"; exit 1; }
export GOMODCACHE="$cache/go/mod"
export GOFLAGS=-mod=mod
mkdir -p "$GOMODCACHE"

# module@version -> its source directory in the module cache.
module_dir() {
  local json
  json=$(go mod download -json "$1") || return 1
  echo "$json" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p'
}

log "downloading sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
gw=$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION") || fail "go mod download gateway-api"
log "downloading sigs.k8s.io/gateway-api-inference-extension@$INFERENCE_EXTENSION_VERSION"
ie=$(module_dir "sigs.k8s.io/gateway-api-inference-extension@$INFERENCE_EXTENSION_VERSION") \
  || fail "go mod download gateway-api-inference-extension"
[ -n "$gw" ] && [ -n "$ie" ] || fail "locate the downloaded modules"

rm -rf "$dir"
mkdir -p "$dir"
# The HTTPRoute (standard channel) and what it names: Gateway and GatewayClass; the v1
# InferencePool its backendRef points at.
for f in httproutes gateways gatewayclasses; do
  cp "$gw/config/crd/standard/gateway.networking.k8s.io_$f.yaml" "$dir/" || fail "copy $f CRD"
done
cp "$ie/config/crd/bases/inference.networking.k8s.io_inferencepools.yaml" "$dir/" \
  || fail "copy inferencepools CRD"
chmod u+w "$dir"/*.yaml
touch "$stamp"
log "CRDs in $dir"
echo "$dir"
