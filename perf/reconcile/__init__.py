"""The parts of `perf.bench_reconcile`: its control plane (`plane`), raw API access and
watches (`kubeio`), CPU and calm (`cpu`), the floors (`floors`), the operator's steps
(`steps`), the results (`results`) and their report (`report`)."""
