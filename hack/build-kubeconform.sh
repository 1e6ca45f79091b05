#!/usr/bin/env bash
# Builds kubeconform (github.com/yannh/kubeconform, the Kubernetes manifest validator)
# from its Go module into a versioned cache directory, for tests/e2e/test_linters.py.
# The wrapper module hack/kubeconform/ pins the version and every dependency (go.sum);
# the build shares every Go build's caches (hack/lib/go-tool.sh).
#
# Its default schema download cannot work here (no registry serves those files): the
# test writes the schemas itself, from the local API server's OpenAPI and from crds/.
#
# Prints the bin directory on its last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/go-tool.sh
source "$here/lib/go-tool.sh"
go_tool kubeconform "$here/kubeconform" "github.com/yannh/kubeconform v0.8.0" \
  github.com/yannh/kubeconform/cmd/kubeconform
