"""Kubeconfig files: client-certificate users and ServiceAccount-token users, and a
kubernetes client for one."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _document(server: str, ca_data: str | None, name: str, user: dict[str, Any]) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": server}
    if ca_data is None:
        cluster["insecure-skip-tls-verify"] = True
    else:
        cluster["certificate-authority-data"] = ca_data
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "openmodel-test", "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": "openmodel-test", "user": name}}],
        "current-context": name,
        "preferences": {},
    }


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    path.chmod(0o600)
    return path


def write_cert_kubeconfig(
    path: Path, server: str, ca_cert: Path, client_cert: Path, client_key: Path, user: str
) -> Path:
    """A self-contained kubeconfig (data embedded) for a client certificate."""
    credentials = {
        "client-certificate-data": _b64(client_cert),
        "client-key-data": _b64(client_key),
    }
    return _write(path, _document(server, _b64(ca_cert), user, credentials))


def write_token_kubeconfig(
    path: Path, server: str, ca_data: str | None, token: str, user: str
) -> Path:
    """A kubeconfig whose user authenticates with a bearer token.

    ``ca_data`` is the base64 PEM of the cluster CA; None skips verification
    (only for clusters whose CA the caller does not know).
    """
    return _write(path, _document(server, ca_data, user, {"token": token}))


def api_client_for(kubeconfig: Path) -> client.ApiClient:
    """A kubernetes ApiClient for a kubeconfig file."""
    # The kubernetes config loaders carry no annotations.
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api
