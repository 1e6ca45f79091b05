"""The platform config's `cache` key: the weights cache's defaults and its download Job.

```yaml
cache:
  accessMode: ReadWriteMany        # what spec.cache.accessMode defaults to
  storageClassName: null           # what spec.cache.storageClassName defaults to
  downloaderImage: openmodel/operator:0.1.0  # the download Job's image (the operator's)
  downloadTimeoutSeconds: 21600    # the Job's activeDeadlineSeconds
  downloadBackoffLimit: 3          # retries of a failure that may pass (network, 5xx)
  hubEndpoint: null                # the Job's HF_ENDPOINT (a mirror); null: huggingface.co
  downloadNodeSelector: {}         # where the download Job's pod may run (node labels)
  downloadTolerations: []          # taints it tolerates ({key, operator, value, effect})
```

The access mode is the platform's choice (docs/api.md, Weights cache): `ReadWriteMany`
where the cluster has such a storage class (NFS, EFS, Filestore, CephFS). The download
pod's placement is the platform's too: by default it goes to any untainted node (it needs
no GPU); `downloadNodeSelector` and `downloadTolerations` send it to a pool of its own
(nodes near the storage, a CPU pool, or tainted nodes that should take it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from openmodel.accelerators import Toleration
from openmodel.api import CACHE_ACCESS_MODES, READ_ONLY_MANY
from openmodel.config.errors import ConfigError, checked_mapping

KEY = "cache"
# The operator's own image: the downloader is a module of this package.
DEFAULT_DOWNLOADER_IMAGE = "openmodel/operator:0.1.0"


@dataclass(frozen=True)
class CacheConfig:
    access_mode: str = "ReadWriteMany"
    storage_class_name: str | None = None
    downloader_image: str = DEFAULT_DOWNLOADER_IMAGE
    download_timeout_seconds: int = 6 * 3600
    download_backoff_limit: int = 3
    hub_endpoint: str | None = None
    download_node_selector: tuple[tuple[str, str], ...] = ()  # sorted (label, value) pairs
    download_tolerations: tuple[Toleration, ...] = ()


TOLERATION_OPERATORS = ("Exists", "Equal")
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _node_selector(raw: Any) -> tuple[tuple[str, str], ...]:
    where = f"{KEY}.downloadNodeSelector"
    if raw is None:
        return ()
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in raw.items()
    ):
        raise ConfigError(f"{where} must map label names to string values, got {raw!r}")
    return tuple(sorted(raw.items()))


def _toleration(where: str, raw: Any) -> Toleration:
    raw = checked_mapping(raw, where, ("key", "operator", "value", "effect"))
    key, operator = raw.get("key"), raw.get("operator", "Exists")
    value, effect = raw.get("value"), raw.get("effect")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{where}.key must be a non-empty string, got {key!r}")
    if operator not in TOLERATION_OPERATORS:
        raise ConfigError(f"{where}.operator must be Exists or Equal, got {operator!r}")
    if value is not None and (operator == "Exists" or not isinstance(value, str)):
        raise ConfigError(f"{where}.value must be a string, and only with operator Equal")
    if effect is not None and effect not in TAINT_EFFECTS:
        raise ConfigError(f"{where}.effect must be one of {', '.join(TAINT_EFFECTS)}")
    return Toleration(key=key, operator=operator, value=value, effect=effect)


def _tolerations(raw: Any) -> tuple[Toleration, ...]:
    where = f"{KEY}.downloadTolerations"
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list, got {raw!r}")
    return tuple(_toleration(f"{where}[{i}]", t) for i, t in enumerate(raw))


def parse_cache(raw: Any) -> CacheConfig:
    known = (
        "accessMode", "storageClassName", "downloaderImage", "downloadTimeoutSeconds",
        "downloadBackoffLimit", "hubEndpoint", "downloadNodeSelector", "downloadTolerations",
    )  # fmt: skip
    raw = checked_mapping({} if raw is None else raw, KEY, known)
    d = CacheConfig()
    mode = raw.get("accessMode", d.access_mode)
    # ReadOnlyMany is a claim filled beforehand, named per ModelDeployment: no default.
    modes = [m for m in CACHE_ACCESS_MODES if m != READ_ONLY_MANY]
    if mode not in modes:
        raise ConfigError(f"cache.accessMode must be one of {', '.join(modes)}, got {mode!r}")
    storage_class = raw.get("storageClassName")
    if storage_class is not None and (not isinstance(storage_class, str) or not storage_class):
        raise ConfigError(
            f"cache.storageClassName must be a non-empty string, got {storage_class!r}"
        )
    image = raw.get("downloaderImage", d.downloader_image)
    if not isinstance(image, str) or not image:
        raise ConfigError(f"cache.downloaderImage must be a non-empty string, got {image!r}")
    timeout = raw.get("downloadTimeoutSeconds", d.download_timeout_seconds)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout < 60:
        raise ConfigError(f"cache.downloadTimeoutSeconds must be an integer >= 60, got {timeout!r}")
    backoff = raw.get("downloadBackoffLimit", d.download_backoff_limit)
    if isinstance(backoff, bool) or not isinstance(backoff, int) or backoff < 0:
        raise ConfigError(f"cache.downloadBackoffLimit must be an integer >= 0, got {backoff!r}")
    endpoint = raw.get("hubEndpoint")
    if endpoint is not None and (not isinstance(endpoint, str) or "://" not in endpoint):
        raise ConfigError(f"cache.hubEndpoint must be a URL, got {endpoint!r}")
    return CacheConfig(
        hub_endpoint=endpoint,
        access_mode=mode,
        storage_class_name=storage_class,
        downloader_image=image,
        download_timeout_seconds=timeout,
        download_backoff_limit=backoff,
        download_node_selector=_node_selector(raw.get("downloadNodeSelector")),
        download_tolerations=_tolerations(raw.get("downloadTolerations")),
    )
