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
# shellcheck source=lib/go-env.sh
source "$here/lib/go-env.sh"
go_env control-plane
bin="$cache/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION-helm-$HELM_VERSION"
mkdir -p "$bin"

build_step() {
  # $1 = step name, $2 = module dir under hack/controlplane/, rest = go build args
  go_build_step "$1" "$here/controlplane/$2" "${@:3}"
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
