#!/usr/bin/env bash
# Copies every CRD in crds/ (the single source of truth) to the places that ship it:
# manifests/crds/ (kubectl apply -k), charts/openmodel/files/crds/ (Helm: rendered by
# templates/crds.yaml, so that `helm upgrade` upgrades them too) and
# operator/openmodel/data/crds/ (packaged: `openmodel validate` walks its schema offline).
#
#   hack/sync-crds.sh           copy; prints what changed
#   hack/sync-crds.sh --check   change nothing; exit 1 naming every copy that differs
#
# OPENMODEL_REPO_ROOT overrides the repository root (the unit test uses a scratch copy).
set -euo pipefail
root=${OPENMODEL_REPO_ROOT:-$(cd "$(dirname "$0")/.." && pwd)}
targets=(manifests/crds charts/openmodel/files/crds operator/openmodel/data/crds)
check=0
case "${1:-}" in
  "") ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

shopt -s nullglob
sources=("$root"/crds/*.yaml)
[ ${#sources[@]} -gt 0 ] || { echo "sync-crds: no CRDs in $root/crds" >&2; exit 1; }

stale=0
for target in "${targets[@]}"; do
  # A copy whose source was removed or renamed is stale too.
  for copy in "$root/$target"/*.yaml; do
    if [ ! -e "$root/crds/$(basename "$copy")" ]; then
      stale=1
      if [ "$check" = 1 ]; then
        echo "sync-crds: $target/$(basename "$copy") has no source in crds/" >&2
      else
        rm "$copy"
        echo "sync-crds: removed $target/$(basename "$copy")" >&2
      fi
    fi
  done
  for src in "${sources[@]}"; do
    copy="$root/$target/$(basename "$src")"
    if ! cmp -s "$src" "$copy"; then
      stale=1
      if [ "$check" = 1 ]; then
        echo "sync-crds: $target/$(basename "$src") differs from crds/$(basename "$src")" >&2
      else
        mkdir -p "$root/$target"
        cp "$src" "$copy"
        echo "sync-crds: updated $target/$(basename "$src")" >&2
      fi
    fi
  done
done

if [ "$check" = 1 ] && [ "$stale" = 1 ]; then
  echo "sync-crds: run hack/sync-crds.sh" >&2
  exit 1
fi
