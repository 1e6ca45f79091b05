"""The ``kubernetes`` Service inside a pod's network namespace: a kube-proxy stand-in.

In a cluster a pod reaches the API server at the ``kubernetes`` Service's ClusterIP
(10.0.0.1:443 here; the kubelet puts it in KUBERNETES_SERVICE_HOST/PORT) and kube-proxy
sends the connection to the API server. Here the API server listens on 127.0.0.1 only,
which no pod namespace can reach, and there is no kube-proxy. So the process node does
it for each pod: it adds the ClusterIP to the pod's ``lo``, opens a listening socket on
ClusterIP:port *inside* the pod's namespace (``setns`` in a short-lived thread: a socket
keeps the namespace it was made in, and Python 3.11 has no ``os.setns``), and pipes every
connection accepted there to the API server's real address in the host's namespace,
byte for byte: TLS goes through untouched, and the API server's certificate names
10.0.0.1 (harness/certs.py), so in-cluster clients verify it as in a cluster.

Every pod gets one, as every pod of a cluster reaches the Service whether or not it
mounts a ServiceAccount token (a pod may bring credentials of its own); it costs a
listening socket and one idle thread per pod.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger("process-node")

CLONE_NEWNET = 0x40000000
CONNECT_TIMEOUT = 5.0
CHUNK = 65536


def listen_in_netns(netns: Path, address: tuple[str, int]) -> socket.socket:
    """A TCP socket listening on ``address`` in the network namespace at ``netns``."""
    made: list[socket.socket] = []
    failed: list[OSError] = []

    def make() -> None:
        # setns moves this thread only; the thread ends right after, the socket stays.
        fd = os.open(netns, os.O_RDONLY)
        try:
            if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                errno = ctypes.get_errno()
                raise OSError(errno, f"setns {netns}: {os.strerror(errno)}")
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(128)
            made.append(listener)
        except OSError as e:
            failed.append(e)
        finally:
            os.close(fd)

    thread = threading.Thread(target=make, name=f"setns-{netns.name}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


class ServiceProxy:
    """Connections accepted on ``listener`` piped to ``upstream`` until ``close``."""

    def __init__(self, listener: socket.socket, upstream: tuple[str, int], name: str) -> None:
        self.listener = listener
        self.upstream = upstream
        self.name = name
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    def start(self) -> ServiceProxy:
        threading.Thread(target=self._accept, name=f"svc-{self.name}", daemon=True).start()
        return self

    def close(self) -> None:
        with self._lock:
            self._closed = True
            sockets = [self.listener, *self._open]
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _track(self, *sockets: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._open.update(sockets)
            return True

    def _forget(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._open.difference_update(sockets)
        for sock in sockets:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return  # closed with the pod
            threading.Thread(
                target=self._connect, args=(downstream,), name=f"svc-{self.name}", daemon=True
            ).start()

    def _connect(self, downstream: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=CONNECT_TIMEOUT)
        except OSError as e:
            # What a client sees when kube-proxy has no endpoint: the connection drops.
            log.warning("pod %s: the API server at %s: %s", self.name, self.upstream, e)
            downstream.close()
            return
        upstream.settimeout(None)
        if not self._track(downstream, upstream):
            downstream.close()
            upstream.close()
            return
        back = threading.Thread(
            target=_copy, args=(upstream, downstream), name=f"svc-{self.name}", daemon=True
        )
        back.start()
        _copy(downstream, upstream)
        back.join()
        self._forget(downstream, upstream)


def _copy(source: socket.socket, sink: socket.socket) -> None:
    """Bytes from ``source`` to ``sink`` until ``source`` ends; then ``sink`` sees the
    end too (a half-close, so the other direction can finish)."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass  # reset, or closed by ServiceProxy.close
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def kubernetes_service_env(host: str, port: int) -> dict[str, str]:
    """What the kubelet puts in every container's environment for the ``kubernetes``
    Service (its port is named ``https``); the container's own env may override it."""
    url = f"tcp://{host}:{port}"
    prefix = f"KUBERNETES_PORT_{port}_TCP"
    return {
        "KUBERNETES_SERVICE_HOST": host,
        "KUBERNETES_SERVICE_PORT": str(port),
        "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
        "KUBERNETES_PORT": url,
        prefix: url,
        f"{prefix}_PROTO": "tcp",
        f"{prefix}_PORT": str(port),
        f"{prefix}_ADDR": host,
    }
