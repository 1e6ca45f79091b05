#!/usr/bin/env bash
# Builds the LeaderWorkerSet controller (sigs.k8s.io/lws, the Kubernetes SIG project that
# runs one leader pod and its workers as a group) from its Go module at an exact release,
# into a versioned cache directory, and keeps the CRD manifests of that release next to
# it. Nothing is built when the binary is there.
#
# The e2e harness runs it as a host process (tests/e2e/harness/lws.py): its admission
# webhooks are reached by the API server through a webhook `url:`, no Service needed.
# It shares the control plane's module and build caches (hack/build-control-plane.sh):
# the k8s.io libraries it needs are mostly compiled there already.
#
# Prints the bin directory on its last line of stdout (lws-controller, crds/).
# Environment:
#   OPENMODEL_CACHE   cache root (default ~/.cache/openmodel)
set -euo pipefail

LWS_VERSION=v0.9.0 # the module proxy serves this exact version (it lists none)

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/go-env.sh
source "$here/lib/go-env.sh"
# -mod=readonly: it builds inside the module's own tree (see below).
go_env lws -mod=readonly
bin="$cache/bin/lws-$LWS_VERSION"

manifests=(
  leaderworkerset.x-k8s.io_leaderworkersets.yaml
  disaggregatedset.x-k8s.io_disaggregatedsets.yaml
  manifests.yaml
  mutating-patch.yaml
  validating-patch.yaml
)
have_manifests() {
  local f
  for f in "${manifests[@]}"; do [ -f "$bin/crds/$f" ] || return 1; done
}

if [ ! -x "$bin/lws-controller" ] || ! have_manifests; then
  mkdir -p "$bin"
  start=$SECONDS
  log "LeaderWorkerSet controller (sigs.k8s.io/lws $LWS_VERSION) ..."
  src=$(go mod download -json "sigs.k8s.io/lws@$LWS_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
  [ -n "$src" ] && [ -d "$src" ] \
    || fail "download sigs.k8s.io/lws@$LWS_VERSION (network or module proxy)" "bash hack/build-lws.sh"
  if [ ! -x "$bin/lws-controller" ]; then
    # Built inside the module's own tree (read-only in the module cache; -mod=readonly
    # never writes go.mod), so its go.sum pins every dependency as the release does.
    (cd "$src" && go build -trimpath -ldflags "-s -w -X sigs.k8s.io/lws/pkg/version.GitVersion=$LWS_VERSION" \
        -o "$bin/lws-controller.tmp" ./cmd) \
      || fail "go build" "bash hack/build-lws.sh  # compiled packages are cached in $GOCACHE"
    mv "$bin/lws-controller.tmp" "$bin/lws-controller"
  fi
  # The CRDs exactly as the release installs them (config/crd/bases: its controller
  # watches DisaggregatedSets too, and stops without that CRD), and its admission webhook
  # configurations with the release's patches (config/webhook: the pod webhooks only for
  # pods of a LeaderWorkerSet), which the harness points at the host process by url.
  # The release's conversion-webhook patch is left out: each CRD serves one version, so
  # the API server never converts.
  rm -rf "$bin/crds.tmp" && mkdir -p "$bin/crds.tmp"
  cp "$src"/config/crd/bases/*.yaml "$src/config/webhook/manifests.yaml" \
    "$src/config/webhook/mutating-patch.yaml" "$src/config/webhook/validating-patch.yaml" \
    "$bin/crds.tmp/"
  chmod u+w "$bin/crds.tmp"/*
  rm -rf "$bin/crds" && mv "$bin/crds.tmp" "$bin/crds"
  log "LeaderWorkerSet controller done in $((SECONDS - start)) s"
fi
echo "$bin"
