"""openmodel's benchmarks and chaos scripts, one module per script, each run as
`python -m perf.<script> --help` from the repository root (docs/benchmarks.md and
docs/reliability.md give the figures and the commands).

Benchmarks: `bench_reconcile` (the operator against plain-client floors on a fresh
audited control plane; its parts in `perf.reconcile`), `bench_gateway` (what the
gateway adds to streamed completions; its parts in `perf.gateway`), `bench_autoscaler`
(one scrape-and-decide cycle over many pods), `bench_autoscale_latency` (load spike to
new replicas), `bench_control_plane` (the local cluster's start time and memory),
`bench_weights_cache` (scale from zero with a weights cache and without, real vLLM).
Chaos and soak: `chaos_operator_kill`, `chaos_api_restart`, `chaos_leader_failover`,
`soak`. For manual use: `cluster` (the e2e cluster in the background) and
`demo_engines` (simulated engines for the demo's pods).

The control plane, the operator process, the audit log and the world checks come from
the e2e harness (`harness`, installed beside this package); every name taken from the
operator package is imported in `perf.openmodel_api` (the renderer side, all that
bench_reconcile imports) or `perf.openmodel_engines` (autoscaler, simulator, engines).
"""
