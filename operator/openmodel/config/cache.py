"""The platform config's `cache` key: the weights cache's defaults and its download Job.

```yaml
cache:
  accessMode: ReadWriteMany        # what spec.cache.accessMode defaults to
  storageClassName: null           # what spec.cache.storageClassName defaults to
  downloaderImage: openmodel/operator:0.1.0  # the download Job's image (the operator's)
  downloadTimeoutSeconds: 21600    # the Job's activeDeadlineSeconds
  downloadBackoffLimit: 3          # retries of a failure that may pass (network, 5xx)
  hubEndpoint: null                # the Job's HF_ENDPOINT (a mirror); null: huggingface.co
```

The access mode is the platform's choice (docs/api.md, Weights cache): `ReadWriteMany`
where the cluster has such a storage class (NFS, EFS, Filestore, CephFS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def parse_cache(raw: Any) -> CacheConfig:
    known = (
        "accessMode", "storageClassName", "downloaderImage", "downloadTimeoutSeconds",
        "downloadBackoffLimit", "hubEndpoint",
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
    )
