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
# shellcheck source=lib/go-env.sh
source "$here/lib/go-env.sh"
export GOTOOLCHAIN=$GO_TOOLCHAIN
GO_MIN_HINT=">= 1.21 (it fetches $GO_TOOLCHAIN itself)" go_env argocd
bin="$cache/bin/argocd-$ARGOCD_VERSION-kustomize-$KUSTOMIZE_VERSION"
mkdir -p "$bin"

if [ ! -x "$bin/argocd" ]; then
  pkg=github.com/argoproj/argo-cd/v3/common
  # Without these Argo CD reports version v99.99.99.
  ld="-s -w -X $pkg.version=${ARGOCD_VERSION#v} -X $pkg.gitTag=$ARGOCD_VERSION -X $pkg.gitTreeState=clean"
  ld="$ld -X $pkg.buildDate=1970-01-01T00:00:00Z"
  # Write to a temporary name so an interrupted build never leaves a half binary behind.
  go_build_step "argo-cd $ARGOCD_VERSION ($GO_TOOLCHAIN)" "$here/argocd" \
    -ldflags "$ld" -o "$bin/argocd.tmp" github.com/argoproj/argo-cd/v3/cmd
  mv "$bin/argocd.tmp" "$bin/argocd"
fi
for name in argocd-application-controller argocd-repo-server argocd-server; do
  ln -sfn argocd "$bin/$name"
done

if [ ! -x "$bin/kustomize" ]; then
  go_build_step "kustomize $KUSTOMIZE_VERSION" "$here/argocd/kustomize" \
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
