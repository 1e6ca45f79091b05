"""The operator's autoscaler loop under garbage metrics, in the real process.

One KWOK pod of an autoscaled ModelDeployment; on its IP, instead of an engine, a small
aiohttp server answers /metrics with what the test chooses. The unit tests
(tests/unit/test_autoscaler_faults.py) cover every fault through the same code; this
shows the process side: the loop outlives the fault, the status the API server stores
says MetricsUnavailable and why, an absurd queue drives real Deployment writes only up
to maxReplicas, and the operator logs no traceback.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes import client

from harness import NotYet, describe_namespace, wait_for
from openmodel_fixtures import OperatorProcess, autoscaled_small_md, condition, create_md, get_md

pytestmark = pytest.mark.cluster

NAME = "faulty"
MAX = 3
BODIES = {
    # Two series of 1e308: their sum overflowed math.fsum, which raised out of the
    # cycle (status never written, a traceback every poll).
    "overflow": "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{engine="0",model_name="faulty"} 1e308\n'
    'vllm:num_requests_waiting{engine="1",model_name="faulty"} 1e308\n',
    "absurd": "# TYPE vllm:num_requests_waiting gauge\n"
    'vllm:num_requests_waiting{engine="0",model_name="faulty"} 1e12\n'
    'vllm:num_requests_running{engine="0",model_name="faulty"} 4.0\n',
}


@dataclass
class FakeEngine:
    """Serves /metrics on host:8000 from a thread with its own loop; `mode` picks the body."""

    host: str
    mode: str = "overflow"
    scrapes: int = 0
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _runner: web.AppRunner | None = None

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.scrapes += 1
        return web.Response(text=BODIES[self.mode], content_type="text/plain")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, 8000).start()

    def start(self) -> FakeEngine:
        threading.Thread(target=self._loop.run_forever, daemon=True).start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)


def replicas(api: client.ApiClient, namespace: str) -> int:
    return int(client.AppsV1Api(api).read_namespaced_deployment(NAME, namespace).spec.replicas)


@pytest.fixture
def engine(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> Iterator[FakeEngine]:
    body = autoscaled_small_md(namespace, NAME, minReplicas=1, maxReplicas=MAX, targetQueueDepth=1)
    create_md(api_client, body)

    def ready_ip() -> str | NotYet:
        pods = client.CoreV1Api(api_client).list_namespaced_pod(
            namespace, label_selector=f"openmodel.dev/model-deployment={NAME}"
        )
        for pod in pods.items:
            ready = any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )
            if ready and pod.status.pod_ip:
                return str(pod.status.pod_ip)
        return NotYet([p.status.phase for p in pods.items])

    ip = wait_for(ready_ip, 60, lambda: describe_namespace(api_client, namespace))
    fake = FakeEngine(ip).start()
    yield fake
    fake.stop()


def test_the_loop_outlives_garbage_metrics_and_caps_an_absurd_queue(
    api_client: client.ApiClient, namespace: str, engine: FakeEngine, operator: OperatorProcess
) -> None:
    log_start = operator.log_path.stat().st_size
    pid = operator.process.pid

    def holding() -> dict[str, Any] | NotYet:
        c = condition(get_md(api_client, namespace, NAME), "ScalingActive")
        ok = c.get("reason") == "MetricsUnavailable" and "more than a float" in c.get("message", "")
        return c if ok else NotYet((c, engine.scrapes))

    c = wait_for(holding, 20, "ScalingActive=False/MetricsUnavailable naming the overflow")
    assert c["status"] == "False"
    assert replicas(api_client, namespace) == 1

    # The same pod now reports 1e12 waiting: believed, but only up to maxReplicas.
    engine.mode = "absurd"
    seen: list[int] = []

    def at_max() -> int | NotYet:
        seen.append(replicas(api_client, namespace))
        return seen[-1] if seen[-1] == MAX else NotYet(seen[-1])

    wait_for(at_max, 30, lambda: describe_namespace(api_client, namespace))

    # The new pods have no engine: once Ready they are unreachable, and the decision
    # holds at max (never down) with MetricsUnavailable; before that, Steady at max.
    def settled_at_max() -> dict[str, Any] | NotYet:
        seen.append(replicas(api_client, namespace))
        auto = (get_md(api_client, namespace, NAME).get("status") or {}).get("autoscaler") or {}
        return auto if auto.get("desiredReplicas") == MAX else NotYet(auto)

    auto = wait_for(settled_at_max, 10, "status.autoscaler.desiredReplicas at max")
    assert max(seen) <= MAX, seen
    assert auto["reason"] in ("ScaleUp", "Steady", "MetricsUnavailable"), auto
    events = client.CoreV1Api(api_client).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={NAME}"
    )
    ups = [e.message for e in events.items if e.reason == "ScaleUp"]
    assert ups and any("reports 1e+12 waiting, counted as 3" in m for m in ups), ups

    assert operator.alive() and operator.process.pid == pid
    with operator.log_path.open("rb") as log:
        log.seek(log_start)
        tail = log.read().decode(errors="replace")
    assert "Traceback" not in tail and "autoscaler cycle failed" not in tail, tail[-4000:]
