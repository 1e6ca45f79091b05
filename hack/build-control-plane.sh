#!/usr/bin/env bash
# Builds the local Kubernetes control plane (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl), kwok and helm from their Go
# modules into a versioned cache directory. Only missing binaries are built.
#
# Prints the bin directory on its last line of stdout.
# Environment:
#   OPENMODEL_CACHE   cache root (default ~/.cache/openmodel)
#   OPENMODEL_NO_HELM set to 1 to skip building helm
set -euo pipefail

K8S_VERSION=v1.36.3
K8S_STAGING_VERSION=v0.36.3
ETCD_VERSION=v3.6.16
KWOK_VERSION=v0.8.0
HELM_VERSION=v3.22.0

here=$(cd "$(dirname "$0")" && pwd)
cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
bin="$cache/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS=-mod=mod
export CGO_ENABLED=0

log() { echo "[build-control-plane] $*" >&2; }

fail() {
  # $1 = step, $2 = how to retry
  log "FAILED at step: $1"
  log "retry with: $2"
  exit 1
}

command -v go >/dev/null 2>&1 || fail "find the Go toolchain (go is not on PATH)" \
  "install Go >= 1.26 (e.g. apt-get install golang-go or your distribution's Go), then: bash hack/build-control-plane.sh"

mkdir -p "$bin" "$GOMODCACHE" "$GOCACHE"

build_step() {
  # $1 = step name, $2 = module dir, rest = go build args
  local step=$1 dir=$2
  shift 2
  local start=$SECONDS
  log "$step ..."
  (cd "$here/controlplane/$dir" && go mod download) \
    || fail "$step: download Go modules (network or module proxy)" "bash hack/build-control-plane.sh  # downloads resume from $GOMODCACHE"
  (cd "$here/controlplane/$dir" && go build -trimpath "$@") \
    || fail "$step: go build" "bash hack/build-control-plane.sh  # compiled packages are cached in $GOCACHE"
  log "$step done in $((SECONDS - start)) s"
}

kube_missing=0
for b in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  [ -x "$bin/$b" ] || kube_missing=1
done
if [ "$kube_missing" = 1 ]; then
  vpkg=k8s.io/component-base/version
  cpkg=k8s.io/client-go/pkg/version
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  ld="-s -w"
  for p in $vpkg $cpkg; do
    ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
  done
  # One go build for all four so they share compiled packages.
  build_step "kubernetes $K8S_VERSION (staging $K8S_STAGING_VERSION)" kube \
    -ldflags "$ld" -o "$bin/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl
fi

if [ ! -x "$bin/etcd" ]; then
  build_step "etcd $ETCD_VERSION" etcd -ldflags "-s -w" -o "$bin/etcd" go.etcd.io/etcd/server/v3
fi

if [ ! -x "$bin/kwok" ]; then
  build_step "kwok $KWOK_VERSION" kwok -ldflags "-s -w" -o "$bin/kwok" sigs.k8s.io/kwok/cmd/kwok
fi

if [ ! -d "$bin/kwok-stage" ]; then
  src="$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  [ -d "$src" ] || fail "locate kwok stage configs in $src" "rm -rf '$bin/kwok' && bash hack/build-control-plane.sh"
  cp -r "$src" "$bin/kwok-stage.tmp" && chmod -R u+w "$bin/kwok-stage.tmp" && mv "$bin/kwok-stage.tmp" "$bin/kwok-stage"
fi

if [ "${OPENMODEL_NO_HELM:-0}" != 1 ] && [ ! -x "$bin/helm" ]; then
  build_step "helm $HELM_VERSION" helm -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    -o "$bin/helm" helm.sh/helm/v3/cmd/helm
fi

for b in etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok; do
  [ -x "$bin/$b" ] || fail "check $b exists in $bin" "bash hack/build-control-plane.sh"
done
echo "$bin"
