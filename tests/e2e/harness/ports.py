"""Free TCP ports on 127.0.0.1.

The kernel picks an unused port (bind to port 0); a port handed out earlier in
this process is never handed out again, so two components started back to back
cannot be given the same port. A port that something else holds is simply not
chosen: nothing here assumes a fixed port such as 2379 or 6443 is free.
"""

from __future__ import annotations

import socket
import threading

_HOST = "127.0.0.1"
_given: set[int] = set()
_lock = threading.Lock()


def is_free(port: int, host: str = _HOST) -> bool:
    """True when nothing listens on or holds ``host:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = _HOST) -> int:
    """A port on ``host`` that is free now and was not returned before by this process."""
    with _lock:
        for _ in range(100):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.bind((host, 0))
                port: int = sock.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port
    raise RuntimeError(f"no free TCP port on {host} after 100 attempts")
