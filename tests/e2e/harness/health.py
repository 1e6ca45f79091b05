"""Readiness probes: poll a component's health endpoint until it answers 200."""

from __future__ import annotations

import http.client
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from .process import Component, ComponentError


def client_tls(ca_cert: Path, client_cert: Path, client_key: Path) -> ssl.SSLContext:
    """TLS context that verifies the server against our CA and presents a client cert."""
    context = ssl.create_default_context(cafile=str(ca_cert))
    context.load_cert_chain(str(client_cert), str(client_key))
    return context


def self_signed_tls() -> ssl.SSLContext:
    """TLS context for components serving their own self-signed certificate
    (the scheduler and controller manager generate one at start)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def probe(url: str, tls: ssl.SSLContext | None, timeout: float = 2.0) -> tuple[int, str]:
    """(HTTP status, body) of a GET; status 0 when the connection itself failed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=tls) as response:
            return response.status, response.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read(2000).decode(errors="replace")
    except (
        urllib.error.URLError,
        ConnectionError,
        TimeoutError,
        http.client.HTTPException,
    ) as error:
        return 0, str(getattr(error, "reason", error))


def wait_healthy(
    component: Component, url: str, tls: ssl.SSLContext | None, deadline: float
) -> None:
    """Poll ``url`` until 200; raise ComponentError (with the log tail) if the
    process exits or ``deadline`` (a time.monotonic() value) passes."""
    status, body = 0, "no answer yet"
    while True:
        component.raise_if_exited()
        status, body = probe(url, tls)
        if status == 200:
            return
        if time.monotonic() >= deadline:
            raise ComponentError(
                component.name,
                f"not healthy at {url} before the deadline; last answer: {status} {body[:500]}",
                component.log_path,
            )
        time.sleep(0.1)
