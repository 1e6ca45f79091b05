#!/usr/bin/env bash
# Builds kubeconform (github.com/yannh/kubeconform, the Kubernetes manifest validator)
# from its Go module into a versioned cache directory, for tests/e2e/test_linters.py.
# Nothing is built when the binary is there. The wrapper module hack/kubeconform/ pins
# the version and every dependency (go.sum); it shares the control plane's module and
# build caches (hack/build-control-plane.sh).
#
# Its default schema download cannot work here (no registry serves those files): the
# test writes the schemas itself, from the local API server's OpenAPI and from crds/.
#
# Prints the bin directory on its last line of stdout.
# Environment:
#   OPENMODEL_CACHE   cache root (default ~/.cache/openmodel)
set -euo pipefail

KUBECONFORM_VERSION=v0.8.0 # keep equal to the version in hack/kubeconform/go.mod

here=$(cd "$(dirname "$0")" && pwd)
cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
bin="$cache/bin/kubeconform-$KUBECONFORM_VERSION-$(cat "$here"/kubeconform/go.mod "$here"/kubeconform/go.sum | sha256sum | cut -c1-12)"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

log() { echo "[build-kubeconform] $*" >&2; }

fail() {
  # $1 = step, $2 = how to retry
  log "FAILED at step: $1"
  log "retry with: $2"
  exit 1
}

command -v go >/dev/null 2>&1 || fail "find the Go toolchain (go is not on PATH)" \
  "install Go >= 1.26, then: bash hack/build-kubeconform.sh"
grep -q "github.com/yannh/kubeconform $KUBECONFORM_VERSION " "$here/kubeconform/go.mod" \
  || fail "check hack/kubeconform/go.mod requires github.com/yannh/kubeconform $KUBECONFORM_VERSION" \
    "set the same version in hack/build-kubeconform.sh and hack/kubeconform/go.mod"

if [ ! -x "$bin/kubeconform" ]; then
  mkdir -p "$bin" "$GOMODCACHE" "$GOCACHE"
  start=$SECONDS
  log "kubeconform $KUBECONFORM_VERSION ..."
  (cd "$here/kubeconform" && go mod download) \
    || fail "download Go modules (network or module proxy)" "bash hack/build-kubeconform.sh  # downloads resume from $GOMODCACHE"
  (cd "$here/kubeconform" && go build -trimpath -ldflags "-s -w" -o "$bin/kubeconform.tmp" \
    github.com/yannh/kubeconform/cmd/kubeconform) \
    || fail "go build" "bash hack/build-kubeconform.sh  # compiled packages are cached in $GOCACHE"
  mv "$bin/kubeconform.tmp" "$bin/kubeconform"
  log "kubeconform done in $((SECONDS - start)) s"
fi
echo "$bin"
