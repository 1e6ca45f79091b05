#!/usr/bin/env bash
# Builds the real Prometheus server from its Go module (github.com/prometheus/prometheus,
# pinned in hack/prometheus/go.mod) into a versioned cache directory, for the test that
# evaluates every query of the Grafana dashboard (docs/cost.md) against it. Nothing is
# built when the binary is there.
#
# `-tags remove_all_sd` leaves out every cloud service discovery (the tests use static
# targets): a third of the compile. No web UI assets (the API is what the test uses).
# Shares the control plane's module and build caches (hack/build-control-plane.sh).
#
# Prints the bin directory on its last line of stdout.
# Environment:
#   OPENMODEL_CACHE   cache root (default ~/.cache/openmodel)
set -euo pipefail

PROMETHEUS_VERSION=v0.316.0 # the Go module's version; keep equal to hack/prometheus/go.mod

here=$(cd "$(dirname "$0")" && pwd)
cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
bin="$cache/bin/prometheus-$PROMETHEUS_VERSION-$(cat "$here"/prometheus/go.mod "$here"/prometheus/go.sum | sha256sum | cut -c1-12)"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

log() { echo "[build-prometheus] $*" >&2; }

fail() {
  # $1 = step, $2 = how to retry
  log "FAILED at step: $1"
  log "retry with: $2"
  exit 1
}

command -v go >/dev/null 2>&1 || fail "find the Go toolchain (go is not on PATH)" \
  "install Go >= 1.26, then: bash hack/build-prometheus.sh"
grep -q "github.com/prometheus/prometheus $PROMETHEUS_VERSION\$" "$here/prometheus/go.mod" \
  || fail "check hack/prometheus/go.mod requires github.com/prometheus/prometheus $PROMETHEUS_VERSION" \
    "set the same version in hack/build-prometheus.sh and hack/prometheus/go.mod"

if [ ! -x "$bin/prometheus" ]; then
  mkdir -p "$bin" "$GOMODCACHE" "$GOCACHE"
  start=$SECONDS
  log "prometheus ($PROMETHEUS_VERSION) ..."
  (cd "$here/prometheus" && go mod download) \
    || fail "download Go modules (network or module proxy)" "bash hack/build-prometheus.sh  # downloads resume from $GOMODCACHE"
  (cd "$here/prometheus" && go build -trimpath -ldflags "-s -w" -tags remove_all_sd \
    -o "$bin/prometheus.tmp" github.com/prometheus/prometheus/cmd/prometheus) \
    || fail "go build" "bash hack/build-prometheus.sh  # compiled packages are cached in $GOCACHE"
  mv "$bin/prometheus.tmp" "$bin/prometheus"
  log "prometheus done in $((SECONDS - start)) s"
fi
echo "$bin"
