"""configMap, secret and projected volumes as files, as the kubelet writes them.

Each such volume is a directory under the pod's own directory holding one file per key
(or per ``items`` entry, at its ``path``), bind-mounted read-only into the container like
every other volume (spec.container_mounts). ``projected`` takes the three sources that the
ServiceAccount admission plugin puts in every pod's ``kube-api-access-*`` volume:

- ``serviceAccountToken``: a real token from the TokenRequest API for the pod's
  ServiceAccount, bound to the pod (it stops working once the pod is gone), with the
  source's ``audience`` and ``expirationSeconds``;
- ``configMap``: ``kube-root-ca.crt``, which kube-controller-manager publishes in every
  namespace (its ``--root-ca-file``: the cluster CA, harness/certs.py);
- ``downwardAPI``: ``metadata.namespace`` (and the other fieldRefs of spec.field_ref).

Written once, when the pod's volumes are prepared. Not done, and why that is fine for
the tests: a kubelet rewrites these files when a ConfigMap or Secret changes and renews
a token at 80 % of its life; a process-node pod keeps what it got, and the admission
plugin asks for 3607 s tokens, longer than any test. ``defaultMode`` and the items'
``mode`` are ignored (containers run as root here, so every file is readable anyway).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .spec import API_TIMEOUT, ConfigError, VolumeNotReady, field_ref

FILE_VOLUME_KINDS = ("configMap", "secret", "projected")


def is_file_volume(volume: Mapping[str, Any]) -> bool:
    return any(kind in volume for kind in FILE_VOLUME_KINDS)


def _object_data(
    api: client.ApiClient, kind: str, namespace: str, name: str, optional: bool
) -> dict[str, bytes] | None:
    """The keys of ConfigMap or Secret ``name`` as bytes; None when it is absent and
    optional."""
    core = client.CoreV1Api(api)
    try:
        if kind == "Secret":
            secret = core.read_namespaced_secret(name, namespace, _request_timeout=API_TIMEOUT)
            return {k: base64.b64decode(v) for k, v in (secret.data or {}).items()}
        config_map = core.read_namespaced_config_map(name, namespace, _request_timeout=API_TIMEOUT)
    except ApiException as e:
        if e.status != 404:
            raise
        if optional:
            return None
        raise VolumeNotReady(f'{kind.lower()} "{name}" not found') from None
    data = {k: str(v).encode() for k, v in (config_map.data or {}).items()}
    data |= {k: base64.b64decode(v) for k, v in (config_map.binary_data or {}).items()}
    return data


def _key_files(
    api: client.ApiClient, kind: str, namespace: str, source: Mapping[str, Any]
) -> dict[str, bytes]:
    """Relative path -> content for a configMap or secret source (a volume's or a
    projected one's)."""
    name = source.get("secretName" if "secretName" in source else "name", "")
    optional = bool(source.get("optional"))
    data = _object_data(api, kind, namespace, name, optional)
    if data is None:
        return {}
    items = source.get("items")
    if not items:
        return data
    files = {}
    for item in items:
        if item["key"] not in data:
            if optional:
                continue
            raise VolumeNotReady(
                f"{kind.lower()} {namespace}/{name} has no key {item['key']!r} (items)"
            )
        files[item["path"]] = data[item["key"]]
    return files


def _token(api: client.ApiClient, pod: Mapping[str, Any], source: Mapping[str, Any]) -> bytes:
    meta = pod["metadata"]
    account = pod["spec"].get("serviceAccountName") or "default"
    audience = source.get("audience")
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(
            audiences=[audience] if audience else [],
            expiration_seconds=int(source.get("expirationSeconds") or 3600),
            bound_object_ref=client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=meta["name"], uid=meta["uid"]
            ),
        )
    )
    try:
        answer = client.CoreV1Api(api).create_namespaced_service_account_token(
            account, meta["namespace"], request, _request_timeout=API_TIMEOUT
        )
    except ApiException as e:
        if e.status == 404:
            raise VolumeNotReady(f'serviceaccount "{account}" not found') from None
        raise
    token = answer.status.token if answer.status else None
    if not token:
        raise VolumeNotReady(f"no token in the TokenRequest answer for {account}")
    return str(token).encode()


def _downward_files(pod: Mapping[str, Any], source: Mapping[str, Any]) -> dict[str, bytes]:
    files = {}
    for item in source.get("items") or []:
        if "fieldRef" not in item:
            raise ConfigError(f"downwardAPI {item.get('path')}: only fieldRef is supported")
        files[item["path"]] = field_ref(item["fieldRef"]["fieldPath"], pod).encode()
    return files


def volume_files(
    api: client.ApiClient, pod: Mapping[str, Any], volume: Mapping[str, Any]
) -> dict[str, bytes]:
    """Relative path -> content of one configMap, secret or projected volume."""
    namespace = pod["metadata"]["namespace"]
    if "configMap" in volume:
        return _key_files(api, "ConfigMap", namespace, volume["configMap"])
    if "secret" in volume:
        return _key_files(api, "Secret", namespace, volume["secret"])
    files: dict[str, bytes] = {}
    for source in volume["projected"].get("sources") or []:
        if "serviceAccountToken" in source:
            token = source["serviceAccountToken"]
            files[token["path"]] = _token(api, pod, token)
        elif "configMap" in source:
            files |= _key_files(api, "ConfigMap", namespace, source["configMap"])
        elif "secret" in source:
            files |= _key_files(api, "Secret", namespace, source["secret"])
        elif "downwardAPI" in source:
            files |= _downward_files(pod, source["downwardAPI"])
        else:
            raise ConfigError(f"projected volume {volume['name']}: source {sorted(source)}")
    return files


def write_file_volumes(
    api: client.ApiClient, pod: Mapping[str, Any], volumes_dir: Path
) -> dict[str, tuple[str, bool]]:
    """Volume name -> (host directory, read-only) for the pod's configMap, secret and
    projected volumes, their files written under ``volumes_dir``."""
    out: dict[str, tuple[str, bool]] = {}
    for volume in pod["spec"].get("volumes") or []:
        if not is_file_volume(volume):
            continue
        directory = volumes_dir / volume["name"]
        for relative, content in volume_files(api, pod, volume).items():
            path = directory / relative
            if not path.resolve().is_relative_to(directory.resolve()):
                raise ConfigError(f"volume {volume['name']}: path {relative!r} leaves it")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        directory.mkdir(parents=True, exist_ok=True)
        out[volume["name"]] = (str(directory), True)
    return out
