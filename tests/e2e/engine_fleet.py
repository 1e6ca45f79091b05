"""Simulated engines on the fake pods' IPs, and a load generator that spreads over them.

`EngineFleet` runs an asyncio loop in a thread. It watches one ModelDeployment's pods
and keeps exactly one simulator listening on `<podIP>:<engine port>` for every Ready pod,
so the operator scrapes them as it would real engines. `LoadGenerator` keeps a fixed
number of clients busy with OpenAI completions spread round-robin over the served pods;
every loop is bounded in time and stops by itself.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
from kubernetes import client

from openmodel.simulator.server import SimulatorHandle, start_simulator

T = TypeVar("T")


@dataclass
class EngineFleet:
    api: client.ApiClient
    namespace: str
    name: str
    engine: str = "vllm"
    port: int = 8000
    slots: int = 2
    service_time: float = 0.3
    max_seconds: float = 300.0
    handles: dict[str, tuple[str, SimulatorHandle]] = field(default_factory=dict)  # ip -> pod
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def start(self) -> EngineFleet:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.run(self._watch_started())
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _watch_started(self) -> None:
        self._watcher = asyncio.create_task(self._watch())

    def _ready_pods(self) -> dict[str, str]:
        pods = client.CoreV1Api(self.api).list_namespaced_pod(
            self.namespace, label_selector=f"openmodel.dev/model-deployment={self.name}"
        )
        out = {}
        for pod in pods.items:
            ready = any(
                c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
            )
            if ready and pod.status.pod_ip and not pod.metadata.deletion_timestamp:
                out[pod.status.pod_ip] = pod.metadata.name
        return out

    async def _watch(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            wanted = await asyncio.to_thread(self._ready_pods)
            for ip in list(self.handles):
                pod, handle = self.handles[ip]
                if wanted.get(ip) != pod:
                    await handle.stop()
                    del self.handles[ip]
            for ip, pod in wanted.items():
                if ip not in self.handles:
                    try:
                        handle = await start_simulator(
                            self.engine,
                            ip,
                            self.port,
                            slots=self.slots,
                            service_time=self.service_time,
                            model=self.name,
                        )
                    except OSError as e:  # e.g. the old pod's socket still closing
                        self.errors.append(f"{pod} {ip}: {e}")
                        continue
                    self.handles[ip] = (pod, handle)
            await asyncio.sleep(0.2)

    def urls(self) -> list[str]:
        return [h.url for _, h in self.handles.values()]

    def total_waiting(self) -> int:
        return sum(h.stats.waiting for _, h in self.handles.values())

    def stop(self) -> None:
        """Stop every simulator and the loop; calling it again does nothing."""
        if self._stop.is_set():
            return
        self._stop.set()

        async def shutdown() -> None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            for _, handle in self.handles.values():
                await handle.stop()
            self.handles.clear()

        self.run(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class LoadGenerator:
    """`clients` concurrent clients, each sending one completion after another."""

    fleet: EngineFleet
    clients: int
    max_seconds: float = 120.0
    sent: int = 0
    failed: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event | None = None

    def start(self) -> LoadGenerator:
        self.fleet.run(self._start())
        return self

    async def _start(self) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        self._counter = itertools.count()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.clients)]

    async def _client(self) -> None:
        assert self._stop is not None
        deadline = time.monotonic() + self.max_seconds
        body = {"model": self.fleet.name, "prompt": "hello", "max_tokens": 8}
        while not self._stop.is_set() and time.monotonic() < deadline:
            urls = self.fleet.urls()
            if not urls:
                await asyncio.sleep(0.05)
                continue
            url = urls[next(self._counter) % len(urls)]
            try:
                async with self._session.post(f"{url}/v1/completions", json=body) as r:
                    await r.read()
                    self.sent += 1
                    if r.status != 200:
                        self.failed += 1
            except (TimeoutError, aiohttp.ClientError):
                # A pod scaled away mid-request: that client moves on to another pod.
                self.failed += 1

    def stop(self) -> None:
        async def halt() -> None:
            assert self._stop is not None
            self._stop.set()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._session.close()

        self.fleet.run(halt())
