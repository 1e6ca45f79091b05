"""The process a gateway pod runs with `gateway.workers` > 1: it starts the workers,
keeps them running, and serves the pod's monitoring port itself.

    code = await Supervisor(count=2, worker_argv=[...], host="0.0.0.0", metrics_port=9090).run()

Workers: `python -m openmodel.gateway ... --worker I/N --worker-socket DIR/worker-I.sock
--parent-fd FD --started T`, each a whole gateway on its own event loop (its own watches, route
table, balancer, holds and limits' share), sharing the API port with SO_REUSEPORT: the
kernel spreads new connections over the workers' sockets. A worker binds the API port
only once its routes are loaded (gateway/server.py), so every worker that takes
connections routes as the others do. A worker sees its supervisor go when the pipe whose
read end `--parent-fd` names reaches its end, and stops then (no orphans); it also stops
when the supervisor has not asked it anything for a minute (a stuck supervisor;
role.SupervisorContact), so that the API port's liveness probe fails for the pod.

Monitoring port (plain HTTP, as a single gateway's):
- /demand: the workers' /demand merged (merge.py); 503 when a running worker does not
  answer in time or answers garbage, so the autoscaler counts the pod's demand
  incomplete rather than too low (a worker that exited, whose socket refuses, held
  nothing any more: its clients' connections went with it);
- /metrics: the workers' with a `worker` label, then the supervisor's own (workers
  ready, restarts); a worker that does not answer is left out of that scrape;
- /readyz: 200 when every worker is ready; /healthz: the supervisor answers.

Liveness: every `CHECK_SECONDS` the supervisor asks each worker's /readyz on its socket;
a worker that stops answering (`FAILED_CHECKS` in a row, or not within
`START_SECONDS` of its start) is killed. A worker that exits is started again (same
index) after `RESTART_DELAY_SECONDS`; more than `MAX_RESTARTS` in `RESTART_WINDOW_SECONDS`,
or a worker exiting with 2 (bad config: starting it again cannot help), stops the pod's
workers and the supervisor exits non-zero, for the kubelet to restart the container.

SIGTERM: the workers get it (each stops taking connections and drains, up to
`DRAIN_SECONDS`) while /demand keeps reporting what they still hold; then the
supervisor exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge

from openmodel.gateway.workers.merge import DemandMerger, MergeError, merge_metrics

log = logging.getLogger(__name__)

CHECK_SECONDS: Final = 2.0
CHECK_TIMEOUT_SECONDS: Final = 5.0
FAILED_CHECKS: Final = 3
START_SECONDS: Final = 60.0
RESTART_DELAY_SECONDS: Final = 0.5
MAX_RESTARTS: Final = 5
RESTART_WINDOW_SECONDS: Final = 60.0
# A worker's own drain (gateway/server.py) and a margin for its cleanup.
DRAIN_SECONDS: Final = 70.0
# A worker's exit status for a bad config or routes file (gateway/__main__.py).
CONFIG_ERROR: Final = 2


class WorkerGaveUp(Exception):
    """The workers cannot be kept running; the message says why."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class _Worker:
    index: int
    socket: Path
    session: aiohttp.ClientSession
    process: asyncio.subprocess.Process | None = None
    started: float = 0.0
    answered: bool = False  # its socket answered since this process started
    ready: bool = False
    failed_checks: int = 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def get(self, path: str) -> aiohttp.ClientResponse:
        timeout = aiohttp.ClientTimeout(total=CHECK_TIMEOUT_SECONDS)
        return await self.session.get(f"http://worker{path}", timeout=timeout)


@dataclass
class Supervisor:
    count: int
    # The worker's command line but for --worker, --worker-socket and --parent-fd.
    worker_argv: Sequence[str]
    host: str
    metrics_port: int  # 0: no monitoring port
    workers: list[_Worker] = field(default_factory=list)
    merger: DemandMerger = field(default_factory=DemandMerger)
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _restarts: deque[float] = field(default_factory=deque)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _gave_up: WorkerGaveUp | None = None
    started: float = field(default_factory=time.time)  # the pod's start, wall clock

    def __post_init__(self) -> None:
        self.restarts = Counter(
            "openmodel_gateway_worker_restarts",
            "Gateway worker processes of this pod started again after they exited.",
            registry=self.registry,
        )
        ready = Gauge(
            "openmodel_gateway_workers_ready",
            "Gateway worker processes of this pod ready (of gateway.workers).",
            registry=self.registry,
        )
        ready.set_function(lambda: sum(1 for w in self.workers if w.running and w.ready))

    async def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; the exit status for the pod."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        # Kept open and never written: the workers read its end when this process ends.
        parent_read, parent_write = os.pipe()
        runtime = Path(tempfile.mkdtemp(prefix="openmodel-gateway-"))  # mode 0700
        for index in range(self.count):
            socket = runtime / f"worker-{index}.sock"
            session = aiohttp.ClientSession(
                # A connection per question: one kept alive to a worker that was
                # replaced would fail the first question after.
                connector=aiohttp.UnixConnector(path=str(socket), force_close=True),
                trust_env=False,
            )
            self.workers.append(_Worker(index, socket, session))
        monitoring = await self._serve_monitoring()
        try:
            keepers = [
                asyncio.create_task(self._keep(w, parent_read), name=f"worker-{w.index}")
                for w in self.workers
            ]
            checks = asyncio.create_task(self._check_forever(), name="worker-checks")
            await self._stopping.wait()
            checks.cancel()
            await self._stop_workers()
            await asyncio.gather(*keepers, checks, return_exceptions=True)
        finally:
            for w in self.workers:
                await w.session.close()
            if monitoring is not None:
                await monitoring.cleanup()
            os.close(parent_read)
            os.close(parent_write)
            for w in self.workers:
                w.socket.unlink(missing_ok=True)
            runtime.rmdir()
        if self._gave_up is not None:
            log.error("gateway: %s", self._gave_up)
            return self._gave_up.code
        return 0

    # --- the workers ---

    async def _keep(self, worker: _Worker, parent_read: int) -> None:
        """Run `worker`, and run it again when it exits, until stopping."""
        while not self._stopping.is_set():
            await self._start(worker, parent_read)
            assert worker.process is not None
            code = await worker.process.wait()
            worker.ready = worker.answered = False
            if self._stopping.is_set():
                return
            log.warning("gateway: worker %d (pid %d) exited with %d",
                        worker.index, worker.process.pid, code)  # fmt: skip
            try:
                self._count_restart(code)
            except WorkerGaveUp as e:
                self._gave_up = e
                self._stopping.set()
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), RESTART_DELAY_SECONDS)

    def _count_restart(self, code: int) -> None:
        if code == CONFIG_ERROR:
            raise WorkerGaveUp("a worker refused the config (exit 2); stopping the pod", 2)
        now = time.monotonic()
        self._restarts.append(now)
        while self._restarts and self._restarts[0] < now - RESTART_WINDOW_SECONDS:
            self._restarts.popleft()
        if len(self._restarts) > MAX_RESTARTS:
            raise WorkerGaveUp(
                f"workers exited {len(self._restarts)} times in {RESTART_WINDOW_SECONDS:g}s; "
                "stopping the pod",
                1,
            )
        self.restarts.inc()

    async def _start(self, worker: _Worker, parent_read: int) -> None:
        worker.socket.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "openmodel.gateway", *self.worker_argv,
            "--worker", f"{worker.index}/{self.count}", "--worker-socket", str(worker.socket),
            "--parent-fd", str(parent_read), "--started", repr(self.started),
        ]  # fmt: skip
        worker.process = await asyncio.create_subprocess_exec(*argv, pass_fds=(parent_read,))
        worker.started = time.monotonic()
        worker.failed_checks = 0
        log.info("gateway: worker %d started (pid %d)", worker.index, worker.process.pid)

    async def _stop_workers(self) -> None:
        running = [w for w in self.workers if w.running]
        for w in running:
            assert w.process is not None
            with contextlib.suppress(ProcessLookupError):
                w.process.send_signal(signal.SIGTERM)
        waits = [w.process.wait() for w in running if w.process is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), DRAIN_SECONDS)
        except TimeoutError:
            for w in self.workers:
                if w.running and w.process is not None:
                    log.warning("gateway: worker %d did not drain in time; killed", w.index)
                    w.process.kill()

    async def _check_forever(self) -> None:
        while True:
            await asyncio.gather(*(self._check(w) for w in self.workers))
            await asyncio.sleep(CHECK_SECONDS)

    async def _check(self, worker: _Worker) -> None:
        """Ask the worker's /readyz; kill a worker that stopped answering."""
        if not worker.running:
            return
        try:
            async with await worker.get("/readyz") as response:
                worker.ready = response.status == 200
            worker.answered = True
            worker.failed_checks = 0
            return
        except (aiohttp.ClientError, TimeoutError) as e:
            failure = f"{type(e).__name__} {e}".strip()
        worker.ready = False
        if worker.answered:
            worker.failed_checks += 1
            stuck = worker.failed_checks >= FAILED_CHECKS
        else:
            stuck = time.monotonic() - worker.started > START_SECONDS
        if stuck and worker.process is not None:
            log.warning("gateway: worker %d stopped answering (%s); killed",
                        worker.index, failure)  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                worker.process.kill()

    # --- the monitoring port ---

    async def _serve_monitoring(self) -> web.AppRunner | None:
        if self.metrics_port == 0:
            log.info("gateway: no metrics port (/metrics and /demand not served)")
            return None
        app = web.Application()
        app.router.add_get("/demand", self.handle_demand)
        app.router.add_get("/metrics", self.handle_metrics)
        app.router.add_get("/readyz", self.handle_readyz)
        app.router.add_get("/healthz", self.handle_healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.metrics_port).start()
        log.info("gateway metrics (/metrics, /demand) of %d workers on http://%s:%s",
                 self.count, self.host, self.metrics_port)  # fmt: skip
        return runner

    async def _ask_all(self, path: str) -> list[tuple[_Worker, Any]]:
        """(worker, body or exception) of every running worker whose socket answered."""
        asked = [w for w in self.workers if w.running and w.answered]

        async def ask(worker: _Worker) -> Any:
            async with await worker.get(path) as response:
                if response.status != 200:
                    raise aiohttp.ClientResponseError(
                        response.request_info, (), status=response.status
                    )
                if path == "/demand":
                    return await response.json()
                return await response.text()

        answers = await asyncio.gather(*(ask(w) for w in asked), return_exceptions=True)
        # A socket that refuses or resets a fresh connection (or is gone): the worker
        # exited, with whatever it held (its clients' connections went with it); not yet
        # reaped, it is left out as one between processes is. A live worker accepts
        # even when stuck, and then times out: that one counts as failed.
        return [
            (w, a)
            for w, a in zip(asked, answers, strict=True)
            if not (
                isinstance(a, aiohttp.ClientConnectionError) and not isinstance(a, TimeoutError)
            )
        ]

    async def handle_demand(self, _: web.Request) -> web.StreamResponse:
        answers = await self._ask_all("/demand")
        failed = [
            f"worker {w.index}: {type(a).__name__}"
            for w, a in answers
            if isinstance(a, BaseException)
        ]
        if not failed:
            try:
                return web.json_response(
                    self.merger.merge([a for _, a in answers], time.monotonic())
                )
            except MergeError as e:
                failed = [str(e)]
        return web.json_response({"error": "; ".join(failed)}, status=503)

    async def handle_metrics(self, _: web.Request) -> web.StreamResponse:
        answers = await self._ask_all("/metrics")
        texts = {w.index: a for w, a in answers if isinstance(a, str)}
        try:
            body = merge_metrics(texts, own=self.registry)
        except MergeError as e:
            return web.Response(status=503, text=str(e))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def handle_readyz(self, _: web.Request) -> web.StreamResponse:
        waiting = [str(w.index) for w in self.workers if not (w.running and w.ready)]
        if waiting:
            return web.Response(status=503, text=f"workers not ready: {', '.join(waiting)}")
        return web.Response(text="ok")

    async def handle_healthz(self, _: web.Request) -> web.StreamResponse:
        return web.Response(text="ok")
