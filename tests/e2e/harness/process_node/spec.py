"""From a pod spec to what a process needs: env (with secretKeyRef and friends resolved
as the kubelet resolves them), $(VAR) expansion, volume sources and the image's root."""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

# (connect, read) seconds for every API call of the process node: the client's default
# is to wait forever, and a worker stuck in one request stops running its pod (seen once,
# a status patch that never returned).
API_TIMEOUT = (5.0, 30.0)
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ConfigError(Exception):
    """The container cannot be configured yet (kubelet: CreateContainerConfigError)."""


class ImageError(Exception):
    """No local root for the image (kubelet: ErrImagePull)."""


class VolumeNotReady(Exception):
    """A volume cannot be mounted yet (kubelet: FailedMount; pod stays ContainerCreating)."""


def image_repository(image: str) -> str:
    """``docker.io/vllm/vllm-openai:v0.31.0`` -> ``vllm/vllm-openai``."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: len(name) - len(last)] + last.split(":", 1)[0]
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/"):
        if name.startswith(prefix):
            return name.removeprefix(prefix)
    return name


def image_root(image: str, images: Mapping[str, Path]) -> Path:
    """The local directory that stands for the image's filesystem: ``images`` maps an
    exact image reference or a repository to it."""
    for key in (image, image_repository(image)):
        if key in images:
            return images[key]
    known = ", ".join(sorted(images)) or "none"
    raise ImageError(f"image {image!r} has no local root on this process node (known: {known})")


def field_ref(path: str, pod: Mapping[str, Any]) -> str:
    meta, status = pod["metadata"], pod.get("status") or {}
    values = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": pod["spec"].get("nodeName"),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    match = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if match:
        return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
    if path not in values:
        raise ConfigError(f"unsupported fieldRef {path!r}")
    return str(values[path] or "")


def _read_key(
    api: client.ApiClient, kind: str, namespace: str, ref: Mapping[str, Any]
) -> str | None:
    core = client.CoreV1Api(api)
    name, key, optional = ref.get("name", ""), ref.get("key", ""), bool(ref.get("optional"))
    try:
        obj = (
            core.read_namespaced_secret(name, namespace, _request_timeout=API_TIMEOUT)
            if kind == "Secret"
            else core.read_namespaced_config_map(name, namespace, _request_timeout=API_TIMEOUT)
        )
    except ApiException as e:
        if e.status == 404:
            if optional:
                return None
            raise ConfigError(f'{kind.lower()} "{name}" not found') from None
        raise
    data = obj.data or {}
    if key not in data:
        if optional:
            return None
        raise ConfigError(f"couldn't find key {key} in {kind} {namespace}/{name}")
    value = data[key]
    return base64.b64decode(value).decode() if kind == "Secret" else str(value)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined names are replaced, $$ escapes."""

    def one(match: re.Match[str]) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$\(|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", one, text)


def container_env(
    api: client.ApiClient, pod: Mapping[str, Any], container: Mapping[str, Any], root: Path
) -> dict[str, str]:
    """The process environment: the image's (PATH into its root, HOME), envFrom, env."""
    namespace = pod["metadata"]["namespace"]
    env: dict[str, str] = {
        "PATH": f"{root / 'bin'}:{BASE_PATH}",
        "HOME": "/root",
        "HOSTNAME": pod["metadata"]["name"],
    }
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            core = client.CoreV1Api(api)
            try:
                obj = (
                    core.read_namespaced_secret(
                        ref["name"], namespace, _request_timeout=API_TIMEOUT
                    )
                    if kind == "Secret"
                    else core.read_namespaced_config_map(
                        ref["name"], namespace, _request_timeout=API_TIMEOUT
                    )
                )
            except ApiException as e:
                if e.status == 404 and ref.get("optional"):
                    continue
                if e.status == 404:
                    raise ConfigError(f'{kind.lower()} "{ref["name"]}" not found') from None
                raise
            for k, v in (obj.data or {}).items():
                env[prefix + k] = base64.b64decode(v).decode() if kind == "Secret" else str(v)
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(str(item.get("value", "")), env)
            continue
        source = item["valueFrom"]
        value: str | None
        if "secretKeyRef" in source:
            value = _read_key(api, "Secret", namespace, source["secretKeyRef"])
        elif "configMapKeyRef" in source:
            value = _read_key(api, "ConfigMap", namespace, source["configMapKeyRef"])
        elif "fieldRef" in source:
            value = field_ref(source["fieldRef"]["fieldPath"], pod)
        else:
            raise ConfigError(f"env {name}: unsupported valueFrom {sorted(source)}")
        if value is not None:
            env[name] = value
    return env


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool


def host_path(path: str, kind: str | None) -> str:
    """A hostPath volume's directory; made first when its type is DirectoryOrCreate, as
    the kubelet does."""
    if kind == "DirectoryOrCreate":
        Path(path).mkdir(mode=0o755, parents=True, exist_ok=True)
    return path


def _pvc_path(api: client.ApiClient, namespace: str, claim: str) -> str:
    core = client.CoreV1Api(api)
    try:
        pvc = core.read_namespaced_persistent_volume_claim(
            claim, namespace, _request_timeout=API_TIMEOUT
        )
    except ApiException as e:
        if e.status == 404:
            raise VolumeNotReady(f'persistentvolumeclaim "{claim}" not found') from None
        raise
    phase = pvc.status.phase if pvc.status else None
    volume = pvc.spec.volume_name if pvc.spec else None
    if phase != "Bound" or not volume:
        raise VolumeNotReady(f'persistentvolumeclaim "{claim}" is not bound')
    pv = core.read_persistent_volume(volume, _request_timeout=API_TIMEOUT)
    if pv.spec is not None and pv.spec.host_path is not None:
        return host_path(pv.spec.host_path.path, pv.spec.host_path.type)
    if pv.spec is not None and pv.spec.local is not None:
        return str(pv.spec.local.path)
    raise VolumeNotReady(
        f"persistentvolume {volume}: only hostPath and local volumes can be "
        "mounted on a process node"
    )


def volume_sources(
    api: client.ApiClient, pod: Mapping[str, Any], pod_dir: Path, shm_dir: Path
) -> dict[str, tuple[str, bool]]:
    """Volume name -> (host directory, read-only), creating emptyDirs."""
    namespace = pod["metadata"]["namespace"]
    out: dict[str, tuple[str, bool]] = {}
    for volume in pod["spec"].get("volumes") or []:
        name = volume["name"]
        if "emptyDir" in volume:
            medium = (volume["emptyDir"] or {}).get("medium")
            path = (shm_dir if medium == "Memory" else pod_dir / "volumes") / name
            path.mkdir(parents=True, exist_ok=True)
            out[name] = (str(path), False)
        elif "persistentVolumeClaim" in volume:
            ref = volume["persistentVolumeClaim"]
            out[name] = (_pvc_path(api, namespace, ref["claimName"]), bool(ref.get("readOnly")))
        elif "hostPath" in volume:
            out[name] = (
                host_path(volume["hostPath"]["path"], volume["hostPath"].get("type")),
                False,
            )
        elif any(kind in volume for kind in ("configMap", "secret", "projected")):
            continue  # files the node writes: volumes.write_file_volumes
        else:
            kinds = sorted(k for k in volume if k != "name")
            raise ConfigError(f"volume {name}: type {kinds} is not supported on a process node")
    return out


def container_mounts(
    container: Mapping[str, Any],
    sources: Mapping[str, tuple[str, bool]],
    scratch: Path,
    image_paths: Sequence[Path] = (),
) -> list[Mount]:
    """The container's volumeMounts, plus its own /tmp (a container does not share the
    host's), in the order they are mounted. ``image_paths`` are the host directories
    that stand for the image (its root, the checkout an editable install imports): one
    that a mount covers (a checkout under /tmp) is bound again at its own path, read-only,
    after the mounts, so the image stays whole wherever the host keeps it."""
    mounts = []
    for m in container.get("volumeMounts") or []:
        if m["name"] not in sources:
            raise ConfigError(f"volumeMount {m['name']!r} names no volume of the pod")
        source, read_only = sources[m["name"]]
        if m.get("subPath"):
            source = str(Path(source) / m["subPath"])
        mounts.append(Mount(source, m["mountPath"], read_only or bool(m.get("readOnly"))))
    # Last: sources under the host's /tmp must be bound before /tmp is covered.
    mounts.append(Mount(str(scratch), "/tmp", False))
    for path in image_paths:
        if any(path.is_relative_to(m.target) for m in mounts):
            mounts.append(Mount(str(path), str(path), True))
    return mounts
