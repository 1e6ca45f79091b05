"""Metering: what each ModelDeployment holds (GPU-seconds) and serves (tokens), and what
that costs at the platform's prices (docs/cost.md). `ledger` is the arithmetic, `loop`
the leader's poll, `metrics` the Prometheus series."""
