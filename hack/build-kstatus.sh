#!/usr/bin/env bash
# Builds hack/kstatus (a small program that prints what the kstatus library of
# sigs.k8s.io/cli-utils, the one Flux and kpt use, says of each object) into a versioned
# cache directory. Nothing is built when the binary is there.
#
# It shares the control plane's module and build caches (hack/build-control-plane.sh):
# hack/kstatus/go.mod resolves the k8s.io modules to the control plane's versions, so
# after that build only cli-utils' kstatus package and the program itself are compiled.
#
# Prints the bin directory on its last line of stdout.
# Environment:
#   OPENMODEL_CACHE   cache root (default ~/.cache/openmodel)
set -euo pipefail

CLI_UTILS_VERSION=v0.37.2 # keep equal to the version in hack/kstatus/go.mod

here=$(cd "$(dirname "$0")" && pwd)
cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
bin="$cache/bin/kstatus-cli-utils-$CLI_UTILS_VERSION-$(cat "$here"/kstatus/go.mod "$here"/kstatus/go.sum "$here"/kstatus/*.go | sha256sum | cut -c1-12)"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

log() { echo "[build-kstatus] $*" >&2; }

fail() {
  # $1 = step, $2 = how to retry
  log "FAILED at step: $1"
  log "retry with: $2"
  exit 1
}

command -v go >/dev/null 2>&1 || fail "find the Go toolchain (go is not on PATH)" \
  "install Go >= 1.26, then: bash hack/build-kstatus.sh"
grep -q "sigs.k8s.io/cli-utils $CLI_UTILS_VERSION\$" "$here/kstatus/go.mod" \
  || fail "check hack/kstatus/go.mod requires sigs.k8s.io/cli-utils $CLI_UTILS_VERSION" \
    "set the same version in hack/build-kstatus.sh and hack/kstatus/go.mod"

if [ ! -x "$bin/kstatus" ]; then
  mkdir -p "$bin" "$GOMODCACHE" "$GOCACHE"
  start=$SECONDS
  log "kstatus (cli-utils $CLI_UTILS_VERSION) ..."
  (cd "$here/kstatus" && go mod download) \
    || fail "download Go modules (network or module proxy)" "bash hack/build-kstatus.sh  # downloads resume from $GOMODCACHE"
  (cd "$here/kstatus" && go build -trimpath -ldflags "-s -w" -o "$bin/kstatus.tmp" .) \
    || fail "go build" "bash hack/build-kstatus.sh  # compiled packages are cached in $GOCACHE"
  mv "$bin/kstatus.tmp" "$bin/kstatus"
  log "kstatus done in $((SECONDS - start)) s"
fi
echo "$bin"
