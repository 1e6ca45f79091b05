"""Simulated engines on the fake pods' IPs, and a load generator that spreads over them.

`EngineFleet` runs an asyncio loop in a thread. It watches one ModelDeployment's pods
and keeps exactly one simulator listening on `<podIP>:<engine port>` for every Ready pod,
so the operator scrapes them as it would real engines. A pod that leaves (deletion
timestamp set, not Ready, or gone) has its simulator stopped the way SIGTERM stops vLLM
started with `--shutdown-timeout drain_seconds`, in a background task: requests in
flight (streams too) finish, new ones get vLLM's drain-time 500; a new pod on the same
IP gets its simulator once the old one has let go of the port. `LoadGenerator` keeps a fixed
number of clients busy with OpenAI completions (embeddings or reranks of `batch` inputs
for a pooling model's fleet) spread round-robin over the served pods; every loop is
bounded in time and stops by itself.
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

from .k8s import name_of, pod_ip, pod_ready

T = TypeVar("T")


@dataclass
class EngineFleet:
    api: client.ApiClient
    namespace: str
    name: str
    engine: str = "vllm"
    # The model's task: generate, or a pooling model's embed or rerank (simulator/pooling.py).
    task: str = "generate"
    port: int = 8000
    slots: int = 2
    service_time: float = 0.3
    max_seconds: float = 300.0
    # What clients put in `model` (engines/base.served_model_name); None: the MD's name.
    served_model: str | None = None
    drain_seconds: float = 30.0
    handles: dict[str, tuple[str, SimulatorHandle]] = field(default_factory=dict)  # ip -> pod
    # Simulators of pods that left, in the order they left, and their stops in progress.
    retired: list[tuple[str, SimulatorHandle]] = field(default_factory=list)
    _stopping: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # ip -> stop
    _loop: asyncio.AbstractEventLoop = field(default_factory=asyncio.new_event_loop)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    errors: list[str] = field(default_factory=list)

    def start(self) -> EngineFleet:
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.run(self._watch_started())
        return self

    @property
    def model(self) -> str:
        return self.served_model if self.served_model is not None else self.name

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
            ip = pod_ip(pod)
            if ip and pod_ready(pod):
                out[ip] = name_of(pod)
        return out

    async def _watch(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            wanted = await asyncio.to_thread(self._ready_pods)
            for ip in list(self.handles):
                pod, handle = self.handles[ip]
                if wanted.get(ip) != pod:
                    del self.handles[ip]  # no new load goes to it from now on
                    self.retired.append((pod, handle))
                    self._stopping[ip] = asyncio.create_task(self._retire(pod, handle))
            for ip, pod in wanted.items():
                stopping = self._stopping.get(ip)
                if ip in self.handles or (stopping is not None and not stopping.done()):
                    continue  # served, or the old pod's engine still drains on this IP
                try:
                    handle = await self._start(ip)
                except OSError as e:
                    self.errors.append(f"{pod} {ip}: {e}")
                    continue
                self.handles[ip] = (pod, handle)
            await asyncio.sleep(0.2)

    async def _start(self, ip: str) -> SimulatorHandle:
        """A simulated engine of this fleet's kind on `ip`."""
        return await start_simulator(
            self.engine,
            ip,
            self.port,
            slots=self.slots,
            service_time=self.service_time,
            model=self.model,
            task=self.task,
        )

    def restart_engine(self, ip: str) -> None:
        """The engine on `ip` restarts inside its pod (a crash the kubelet restarts): a new
        process on the same address, its counters from zero."""

        async def restart() -> None:
            pod, handle = self.handles[ip]
            await handle.stop(drain_seconds=0)
            fresh = await self._start(ip)
            self.handles[ip] = (pod, fresh)

        self.run(restart())

    async def _retire(self, pod: str, handle: SimulatorHandle) -> None:
        try:
            await handle.stop(drain_seconds=self.drain_seconds)
        except Exception as e:  # not swallowed: the test reads `errors`
            self.errors.append(f"{pod} {handle.host}: stop failed: {e!r}")

    def draining(self) -> list[SimulatorHandle]:
        """Simulators of pods that left and whose stop has not ended yet."""
        busy = {ip for ip, task in self._stopping.items() if not task.done()}
        return [h for _, h in self.retired if h.host in busy]

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
            # The test is over: drains still running end now, like everything else.
            for _, handle in [*self.retired, *self.handles.values()]:
                await handle.stop()
            await asyncio.gather(*self._stopping.values(), return_exceptions=True)
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
    # Inputs per embeddings request (documents per rerank): one engine request each.
    batch: int = 1
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
        path, body = self._request()
        while not self._stop.is_set() and time.monotonic() < deadline:
            urls = self.fleet.urls()
            if not urls:
                await asyncio.sleep(0.05)
                continue
            url = urls[next(self._counter) % len(urls)]
            try:
                async with self._session.post(f"{url}{path}", json=body) as r:
                    await r.read()
                    self.sent += 1
                    if r.status != 200:
                        self.failed += 1
            except (TimeoutError, aiohttp.ClientError):
                # A pod scaled away mid-request: that client moves on to another pod.
                self.failed += 1

    def _request(self) -> tuple[str, dict[str, Any]]:
        model, texts = self.fleet.model, [f"hello world {i}" for i in range(self.batch)]
        if self.fleet.task == "embed":
            return "/v1/embeddings", {"model": model, "input": texts}
        if self.fleet.task == "rerank":
            return "/v1/rerank", {"model": model, "query": "hello", "documents": texts}
        return "/v1/completions", {"model": model, "prompt": "hello", "max_tokens": 8}

    def stop(self) -> None:
        async def halt() -> None:
            assert self._stop is not None
            self._stop.set()
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._session.close()

        self.fleet.run(halt())
