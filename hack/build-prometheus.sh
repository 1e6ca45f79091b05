#!/usr/bin/env bash
# Builds the real Prometheus server from its Go module (github.com/prometheus/prometheus,
# pinned with every dependency in hack/prometheus/) into a versioned cache directory, for
# the test that runs every query of the Grafana dashboard (docs/cost.md) against it,
# sharing every Go build's caches (hack/lib/go-tool.sh).
#
# `-tags remove_all_sd` leaves out every cloud service discovery (the test uses static
# targets): most of the compile. No web UI assets: the test uses the HTTP API.
#
# Prints the bin directory on its last line of stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=lib/go-tool.sh
source "$here/lib/go-tool.sh"
go_tool prometheus "$here/prometheus" "github.com/prometheus/prometheus v0.316.0" \
  github.com/prometheus/prometheus/cmd/prometheus -tags remove_all_sd
