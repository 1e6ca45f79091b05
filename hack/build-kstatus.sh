#!/usr/bin/env bash
# Builds hack/kstatus (a small program that prints what the kstatus library of
# sigs.k8s.io/cli-utils, the one Flux and kpt use, says of each object) into a versioned
# cache directory, sharing every Go build's caches (hack/lib/go-tool.sh):
# hack/kstatus/go.mod resolves the k8s.io modules to the control plane's versions, so
# after that build only cli-utils' kstatus package and the program itself are compiled.
#
# Prints the bin directory on its last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/go-tool.sh
source "$here/lib/go-tool.sh"
go_tool kstatus "$here/kstatus" "sigs.k8s.io/cli-utils v0.37.2" .
