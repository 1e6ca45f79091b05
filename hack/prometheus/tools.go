// Pins the Prometheus server for hack/build-prometheus.sh (go mod tidy keeps it).

//go:build tools

package tools

import _ "github.com/prometheus/prometheus/cmd/prometheus"
