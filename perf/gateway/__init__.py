"""The parts of `perf.bench_gateway`: its client process (`client`), the processes it
starts (`processes`), one measured phase (`measure`) and the report (`report`)."""
