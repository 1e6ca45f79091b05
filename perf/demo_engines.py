"""Simulated engines for the demo's KWOK pods: one simulated vLLM on `<pod IP>:8000` for
every Ready pod of the ModelDeployment, serving its served model name, so that a request
through the gateway gets an answer on a machine without GPUs.

    python -m perf.demo_engines NAMESPACE NAME     # until SIGTERM; KUBECONFIG from env

KWOK pods have loopback IPs (127.64.0.0/10 here); nothing else listens on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from kubernetes import client, config

from perf.openmodel_api import GROUP, OWNER_LABEL, PLURAL, VERSION, parse_model_deployment
from perf.openmodel_engines import (
    SimulatorHandle,
    engine_for,
    served_model_name,
    start_simulator,
)

from harness.k8s import as_object, pod_ip, pod_ready


def ready_ips(core: client.CoreV1Api, namespace: str, name: str) -> set[str]:
    pods = core.list_namespaced_pod(namespace, label_selector=f"{OWNER_LABEL}={name}").items
    return {ip for p in pods if (ip := pod_ip(p)) and pod_ready(p)}


async def follow(namespace: str, name: str) -> None:
    config.load_kube_config()  # type: ignore[no-untyped-call]  # the loaders are unannotated
    api = client.ApiClient()
    core = client.CoreV1Api(api)
    body = as_object(
        client.CustomObjectsApi(api).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
    )
    md = parse_model_deployment(body)
    served, port = served_model_name(md.spec), engine_for(md.spec.engine).port
    running: dict[str, SimulatorHandle] = {}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"simulating {md.spec.engine} '{served}' on the Ready pods of {namespace}/{name}")
    while not stop.is_set():
        wanted = await asyncio.to_thread(ready_ips, core, namespace, name)
        for ip in set(running) - wanted:
            await running.pop(ip).stop(drain_seconds=5)
        for ip in wanted - set(running):
            try:
                running[ip] = await start_simulator(
                    md.spec.engine, ip, port, slots=8, service_time=0.2, model=served
                )
                print(f"engine up on {ip}:{port}", flush=True)
            except OSError as e:
                print(f"{ip}:{port}: {e}", file=sys.stderr, flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=1.0)
    for handle in running.values():
        await handle.stop()


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    asyncio.run(follow(sys.argv[1], sys.argv[2]))
