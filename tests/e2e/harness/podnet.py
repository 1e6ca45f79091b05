"""Pod networks leased per cluster, so concurrent clusters on one machine
never hand out the same pod IP.

Pod IPs are loopback addresses (all of 127.0.0.0/8 routes to ``lo``), which
the API server accepts in pod status, so a process on this machine can bind a
pod's IP as if it were the pod. Two test sessions (or a session and
``python -m perf.cluster up``) running at once would otherwise both give out
127.64.0.1 and their simulated engines would fight over ``127.64.0.1:8000``.
A lease is an exclusive ``flock`` on a file per network: the kernel releases
it when the last holder exits, however it exits (even SIGKILL). The file
descriptor is passed to kwok, so a detached cluster keeps its lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SEARCH_SPACE = ipaddress.IPv4Network("127.64.0.0/10")  # 127.64.0.0 - 127.127.255.255
LOCK_DIR = Path(tempfile.gettempdir()) / "openmodel-pod-networks"


@dataclass
class PodNetworkLease:
    network: ipaddress.IPv4Network
    fd: int

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _candidates(preferred: ipaddress.IPv4Network) -> Iterator[ipaddress.IPv4Network]:
    yield preferred
    if preferred.subnet_of(SEARCH_SPACE):
        for network in SEARCH_SPACE.subnets(new_prefix=preferred.prefixlen):
            if network != preferred:
                yield network


def lease_pod_network(preferred: ipaddress.IPv4Network) -> PodNetworkLease:
    """The first network (``preferred``, then others of its size in 127.64.0.0/10)
    that no other live cluster holds."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    for network in _candidates(preferred):
        path = LOCK_DIR / f"{network.network_address}_{network.prefixlen}.lock"
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        return PodNetworkLease(network, fd)
    raise RuntimeError(f"every pod network like {preferred} in {SEARCH_SPACE} is in use")
