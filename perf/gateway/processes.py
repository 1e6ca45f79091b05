"""bench_gateway's processes: every one it starts (engines, gateway, clients), each
stopped by its pid on the way out, and the simulated engines and the gateway started and
waited for."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

from perf.runs import REPO

from .client import MODEL

GATEWAY_HOST: Final = "127.0.0.20"
ENGINE_HOST_BASE: Final = 21  # engine i listens on 127.0.0.(21 + i)
START_DEADLINE_S: Final = 30.0


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark process dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Every process the benchmark starts; stop_all() ends each of them by its pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self.env = {k: v for k, v in os.environ.items() if k != "OPENMODEL_CONFIG"}
        self.env["PYTHONUNBUFFERED"] = "1"

    def start(
        self,
        name: str,
        argv: Sequence[str],
        cpus: set[int] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, **(env or {})},
                cwd=REPO,
                start_new_session=True,  # Ctrl-C reaches us; we stop them in order
                preexec_fn=_die_with_parent,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        if cpus:
            os.sched_setaffinity(popen.pid, cpus)
        return child

    def stop(self, child: Child, grace_s: float = 5.0) -> None:
        if child.popen.poll() is None:
            child.popen.terminate()
            try:
                child.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait(5.0)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)


class BenchError(Exception):
    pass


def _bindable(host: str, port: int) -> int | None:
    """The port bound on `host` (0 picks one), or None when it is taken."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return None
        return int(s.getsockname()[1])


def common_free_port(hosts: Sequence[str]) -> int:
    for _ in range(50):
        port = _bindable(hosts[0], 0)
        if port is not None and all(_bindable(h, port) for h in hosts[1:]):
            return port
    raise BenchError(f"no port free on all of {hosts[0]}..{hosts[-1]}")


def wait_until(
    what: str, ready: Callable[[], bool], children: Sequence[Child], deadline_s: float
) -> None:
    deadline = time.monotonic() + deadline_s
    while not ready():
        for child in children:
            if child.popen.poll() is not None:
                raise BenchError(
                    f"{child.name} exited ({child.popen.returncode}) while waiting for {what}:\n"
                    + child.log_tail()
                )
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {c.name}\n{c.log_tail(5)}" for c in children)
            raise BenchError(f"{what} not ready after {deadline_s:g} s\n{tails}")
        time.sleep(0.1)


def engine_argv(
    host: str,
    port: int,
    slots: int,
    service_time: float,
    prefill_per_token: float = 0.0,
    cache_blocks: int = 4096,
) -> list[str]:
    return [
        *(sys.executable, "-m", "openmodel.simulator", "--host", host, "--port", str(port)),
        *("--slots", str(slots), "--service-time", str(service_time), "--model", MODEL),
        *("--prefill-seconds-per-token", str(prefill_per_token)),
        *("--cache-blocks", str(cache_blocks)),
    ]


def all_listening(engines: Sequence[Child]) -> bool:
    return all("listening on" in e.log_tail(3) for e in engines)


def start_engines(
    procs: Processes,
    count: int,
    slots: int,
    service_time: float,
    cpus: set[int] | None,
    prefill_per_token: float = 0.0,
    cache_blocks: int = 4096,
) -> list[Child]:
    hosts = [f"127.0.0.{ENGINE_HOST_BASE + i}" for i in range(count)]
    for _ in range(3):  # the port can be taken between the probe and the engines' bind
        port = common_free_port(hosts)
        engines = [
            procs.start(
                f"engine-{i}",
                engine_argv(host, port, slots, service_time, prefill_per_token, cache_blocks),
                cpus,
            )
            for i, host in enumerate(hosts)
        ]
        try:
            wait_until("the engines", partial(all_listening, engines), engines, START_DEADLINE_S)
        except BenchError as e:
            for engine in engines:
                procs.stop(engine)
            if "Address already in use" not in str(e):
                raise
            continue
        return engines
    raise BenchError("the engines could not bind a common port three times")


def engine_targets(engines: Sequence[Child]) -> list[tuple[str, int]]:
    targets = []
    for engine in engines:
        url = engine.log_tail(3).split("listening on http://", 1)[1].split()[0]
        host, port = url.rsplit(":", 1)
        targets.append((host, int(port)))
    return targets


_NO_PROXY: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with _NO_PROXY.open(url, timeout=timeout_s) as r:
            return int(r.status), r.read().decode()
    except OSError:
        return 0, ""


def start_gateway(
    procs: Processes,
    targets: Sequence[tuple[str, int]],
    cpus: set[int] | None,
    gateway_config: Mapping[str, object] | None = None,
    extra_args: Sequence[str] = (),
    name: str = "gateway",
) -> tuple[Child, str, str]:
    """The gateway process, its API's base URL and its metrics port's (/metrics);
    `extra_args` go to `python -m openmodel.gateway` (e.g. `--loop asyncio`)."""
    routes = procs.workdir / "routes.yaml"
    routes.write_text(
        json.dumps(  # JSON is YAML
            {
                "models": [
                    {
                        "name": MODEL,
                        "namespace": "bench",
                        "modelDeployment": MODEL,
                        "engine": "vllm",
                        "port": targets[0][1],
                        "hosts": [h for h, _ in targets],
                    }
                ]
            },
            indent=2,
        )
    )
    # Static routes, no cluster to ask who a caller is: the door is off, said explicitly
    # (perf/bench_gateway_auth.py measures the door's own cost).
    config = procs.workdir / "gateway-config.yaml"
    config.write_text(json.dumps({"gateway": {"auth": {"mode": "off"}, **(gateway_config or {})}}))
    port, metrics_port = _bindable(GATEWAY_HOST, 0), _bindable(GATEWAY_HOST, 0)
    if port is None or metrics_port is None:
        raise BenchError(f"cannot bind {GATEWAY_HOST}")
    gateway = procs.start(
        name,
        [sys.executable, "-m", "openmodel.gateway", "--host", GATEWAY_HOST,
         "--port", str(port), "--metrics-port", str(metrics_port), "--routes", str(routes),
         "--log-level", "WARNING", *extra_args],
        cpus,
        env={"OPENMODEL_CONFIG": str(config)},
    )  # fmt: skip
    base = f"http://{GATEWAY_HOST}:{port}"
    wait_until(
        "the gateway", lambda: http_get(base + "/readyz")[0] == 200, [gateway], START_DEADLINE_S
    )
    metrics = f"http://{GATEWAY_HOST}:{metrics_port}"
    if int(str((gateway_config or {}).get("workers", 1))) > 1:
        # The API port answers once one worker is; the supervisor's /readyz, all.
        def all_ready() -> bool:
            return http_get(metrics + "/readyz")[0] == 200

        wait_until("the gateway's workers", all_ready, [gateway], START_DEADLINE_S)
    return gateway, base, metrics
