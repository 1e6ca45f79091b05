#!/usr/bin/env bash
# Writes argocd/argocd-cm.yaml from argocd/health.lua (the only place to edit the
# health check). tests/unit/test_argocd_health.py fails when the two differ.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out="$here/argocd-cm.yaml"
{
  cat <<'EOF'
# GENERATED from argocd/health.lua by argocd/generate-argocd-cm.sh; edit health.lua and
# rerun the script. Merge it into Argo CD's argocd-cm (it only adds one key):
#   kubectl -n argocd patch configmap argocd-cm --type merge --patch-file argocd/argocd-cm.yaml
# With Argo CD's Helm chart, put the same key under configs.cm instead.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
  resource.customizations.health.openmodel.dev_ModelDeployment: |
EOF
  # Blank lines stay empty: no trailing whitespace in the block scalar.
  sed -e '/./s/^/    /' "$here/health.lua"
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out" >&2
