"""Start a set of components on fresh ports and wait until all are healthy.

Ports come from ``ports.free_port``; if a component still loses a race for
its port (another process bound it between allocation and start), it is
restarted on new ports, up to PORT_ATTEMPTS times: a port in use is avoided,
never fatal. Any other failure raises ComponentError.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .health import wait_healthy
from .ports import free_port
from .process import Component, ComponentError

PORT_ATTEMPTS = 3
START_TIMEOUT = {"etcd": 30.0, "kube-apiserver": 90.0}
DEFAULT_START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Launch:
    """How to start one component, given freshly allocated ports."""

    name: str
    port_count: int
    argv: Callable[[list[int]], list[str]]
    health_url: Callable[[list[int]], str]
    tls: ssl.SSLContext | None = None
    pass_fds: tuple[int, ...] = ()  # e.g. a pod network lease the process keeps alive
    env: dict[str, str] | None = None
    stop_timeout: float = 5.0


@dataclass(frozen=True)
class Started:
    component: Component
    ports: list[int]


def _lost_port_race(component: Component) -> bool:
    return component.returncode() is not None and (
        "address already in use" in component.log_since_start()
    )


def launch(
    launches: Sequence[Launch],
    logs_dir: Path,
    *,
    owned: bool,
    on_start: Callable[[Component], None] = lambda component: None,
) -> dict[str, Started]:
    """Start all ``launches`` at once and wait for each; ``on_start`` sees every process
    started (so a caller can stop it even if a later one fails)."""
    result: dict[str, Started] = {}
    pending = list(launches)
    for attempt in range(1, PORT_ATTEMPTS + 1):
        running: list[tuple[Launch, Started]] = []
        for item in pending:
            ports = [free_port() for _ in range(item.port_count)]
            component = Component(
                item.name,
                item.argv(ports),
                logs_dir / f"{item.name}.log",
                stop_timeout=item.stop_timeout,
            )
            component.start(owned=owned, pass_fds=item.pass_fds, env=item.env)
            on_start(component)
            running.append((item, Started(component, ports)))
        retry = []
        for item, started in running:
            deadline = time.monotonic() + START_TIMEOUT.get(item.name, DEFAULT_START_TIMEOUT)
            try:
                wait_healthy(started.component, item.health_url(started.ports), item.tls, deadline)
            except ComponentError:
                if attempt < PORT_ATTEMPTS and _lost_port_race(started.component):
                    started.component.stop()
                    retry.append(item)
                    continue
                raise
            result[item.name] = started
        if not retry:
            break
        pending = retry
    return result
