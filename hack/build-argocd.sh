#!/usr/bin/env bash
# Builds Argo CD (and the kustomize its repo-server runs) from their Go modules into a
# versioned cache directory, for the GitOps e2e tests. Only what is missing is built.
#
# Argo CD is one binary that dispatches on its name: the build writes `argocd` once and
# links argocd-application-controller, argocd-repo-server and argocd-server to it. The
# wrapper module hack/argocd/ pins the versions (Argo CD's own replace lines copied; its
# local ./gitops-engine replace dropped: that module is published on its own), and
# hack/argocd/kustomize/ pins kustomize (with kube-openapi replaced by the version Argo CD
# uses: the one kustomize asks for is not served by the module proxy).
# The repo-server also needs git (Debian's), helm (hack/build-control-plane.sh builds it)
# and Argo CD's hack/git-verify-wrapper.sh, copied here from the module source, as are the
# CRDs (manifests/crds/).
#
# Prints the bin directory on its last line of stdout.
# Environment:
#   OPENMODEL_CACHE   cache root (default ~/.cache/openmodel)
set -euo pipefail

ARGOCD_VERSION=v3.6.1
KUSTOMIZE_VERSION=v5.8.3
GO_TOOLCHAIN=go1.27.3 # Argo CD v3.6 asks for go >= 1.27.0

here=$(cd "$(dirname "$0")" && pwd)
cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
bin="$cache/bin/argocd-$ARGOCD_VERSION-kustomize-$KUSTOMIZE_VERSION"
export GOMODCACHE="$cache/go/mod"
export GOCACHE="$cache/go/build"
export GOFLAGS=-mod=mod
export GOTOOLCHAIN=$GO_TOOLCHAIN
export CGO_ENABLED=0

log() { echo "[build-argocd] $*" >&2; }

fail() {
  # $1 = step, $2 = how to retry
  log "FAILED at step: $1"
  log "retry with: $2"
  exit 1
}

command -v go >/dev/null 2>&1 || fail "find the Go toolchain (go is not on PATH)" \
  "install Go >= 1.21 (it fetches $GO_TOOLCHAIN itself), then: bash hack/build-argocd.sh"

mkdir -p "$bin" "$GOMODCACHE" "$GOCACHE"

build_step() {
  # $1 = step name, $2 = module dir, rest = go build args
  local step=$1 dir=$2
  shift 2
  local start=$SECONDS
  log "$step ..."
  (cd "$dir" && go mod download) \
    || fail "$step: download Go modules (network or module proxy)" "bash hack/build-argocd.sh  # downloads resume from $GOMODCACHE"
  (cd "$dir" && go build -trimpath "$@") \
    || fail "$step: go build" "bash hack/build-argocd.sh  # compiled packages are cached in $GOCACHE"
  log "$step done in $((SECONDS - start)) s"
}

if [ ! -x "$bin/argocd" ]; then
  pkg=github.com/argoproj/argo-cd/v3/common
  # Without these Argo CD reports version v99.99.99.
  ld="-s -w -X $pkg.version=${ARGOCD_VERSION#v} -X $pkg.gitTag=$ARGOCD_VERSION -X $pkg.gitTreeState=clean"
  ld="$ld -X $pkg.buildDate=1970-01-01T00:00:00Z"
  # Write to a temporary name so an interrupted build never leaves a half binary behind.
  build_step "argo-cd $ARGOCD_VERSION ($GO_TOOLCHAIN)" "$here/argocd" \
    -ldflags "$ld" -o "$bin/argocd.tmp" github.com/argoproj/argo-cd/v3/cmd
  mv "$bin/argocd.tmp" "$bin/argocd"
fi
for name in argocd-application-controller argocd-repo-server argocd-server; do
  ln -sfn argocd "$bin/$name"
done

if [ ! -x "$bin/kustomize" ]; then
  build_step "kustomize $KUSTOMIZE_VERSION" "$here/argocd/kustomize" \
    -ldflags "-s -w -X sigs.k8s.io/kustomize/api/provenance.version=kustomize/$KUSTOMIZE_VERSION" \
    -o "$bin/kustomize" sigs.k8s.io/kustomize/kustomize/v5
fi

src="$GOMODCACHE/github.com/argoproj/argo-cd/v3@$ARGOCD_VERSION"
if [ ! -x "$bin/git-verify-wrapper.sh" ]; then
  [ -f "$src/hack/git-verify-wrapper.sh" ] || (cd "$here/argocd" && go mod download github.com/argoproj/argo-cd/v3) \
    || fail "download the argo-cd module source" "bash hack/build-argocd.sh"
  install -m 0755 "$src/hack/git-verify-wrapper.sh" "$bin/git-verify-wrapper.sh"
fi
if [ ! -d "$bin/crds" ]; then
  [ -d "$src/manifests/crds" ] || fail "locate Argo CD's CRDs in $src/manifests/crds" "rm -rf '$bin' && bash hack/build-argocd.sh"
  cp -r "$src/manifests/crds" "$bin/crds.tmp" && chmod -R u+w "$bin/crds.tmp" && mv "$bin/crds.tmp" "$bin/crds"
fi

for b in argocd argocd-application-controller argocd-repo-server argocd-server kustomize git-verify-wrapper.sh; do
  [ -x "$bin/$b" ] || fail "check $b exists in $bin" "bash hack/build-argocd.sh"
done
echo "$bin"
