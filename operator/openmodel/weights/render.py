"""The weights cache of one ModelDeployment as objects: its claim and its download Job.

Pure: functions of the ModelDeployment, the platform config and the commit the model
resolver pinned (when it knows one). The reconciler's `render_children` calls them with
the metadata every child carries; what the Job and its pod show is read in `state.py`.
The design is docs/api.md, *Weights cache*.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from typing import Any

from openmodel.api import (
    READ_ONLY_MANY,
    READ_WRITE_ONCE,
    ModelDeployment,
    SpecError,
    check_cache_access_mode,
    requested_revision,
)
from openmodel.config import PlatformConfig
from openmodel.engines import engine_for
from openmodel.engines.base import WeightFiles, model_source

# The download pod's label: not the owner label, so it is never taken for an engine pod.
WEIGHTS_FOR_LABEL = "openmodel.dev/weights-for"
DOWNLOAD_CONTAINER = "download"
DOWNLOADER_MODULE = "openmodel.weights.download"
# Where the download pod mounts the claim; its HF_HOME. Engines mount the same claim at
# their own HF_HOME: the layout under it (hub/models--org--name/...) is the same.
CACHE_MOUNT = "/cache"
# The downloader's exit codes for causes no retry can fix: the Job fails at once.
EXIT_UNAUTHORIZED = 10
EXIT_NOT_FOUND = 11
EXIT_OUT_OF_SPACE = 12
EXIT_INCOMPLETE = 13
PERMANENT_EXIT_CODES = (EXIT_UNAUTHORIZED, EXIT_NOT_FOUND, EXIT_OUT_OF_SPACE, EXIT_INCOMPLETE)
# The operator's own claim per access mode; a mode change is a new claim, since a
# claim's access modes cannot change. ReadWriteOnce keeps the name claims always had.
OWN_CLAIM_SUFFIXES = {READ_WRITE_ONCE: "cache", "ReadWriteMany": "cache-rwx"}
JOB_NAME_PREFIX_MAX = 40
_HASH_CHARS = 10


@dataclass(frozen=True)
class Download:
    """What the download Job fetches (or, on a claim filled beforehand, checks)."""

    repo: str
    revision: str  # the branch, tag or commit asked for (spec.args --revision, else main)
    commit: str | None  # the commit the model resolver pinned, when it read config.json
    files: WeightFiles
    adapters: tuple[str, ...]  # adapter repo ids, fetched whole (they are small)
    verify_only: bool  # ReadOnlyMany: the claim is filled beforehand; check, fetch nothing


@dataclass(frozen=True)
class CachePlan:
    claim_name: str
    access_mode: str
    own_claim: bool  # the operator makes the claim (no spec.cache.claimName)
    download: Download | None  # None: nothing to fetch before the engine starts
    job_name: str | None


def access_mode(md: ModelDeployment, config: PlatformConfig) -> tuple[str, str]:
    """The cache's access mode and the field it came from (for a refusal's message)."""
    cache = md.spec.cache
    if cache is not None and cache.access_mode is not None:
        return cache.access_mode, "spec.cache.accessMode"
    return config.cache.access_mode, "spec.cache.accessMode (the platform default cache.accessMode)"


def own_claim_name(name: str, mode: str) -> str:
    return f"{name}-{OWN_CLAIM_SUFFIXES[mode]}"


def own_claim_names(name: str) -> tuple[str, ...]:
    """Every claim name the operator may have made for a ModelDeployment, in any mode."""
    return tuple(own_claim_name(name, mode) for mode in OWN_CLAIM_SUFFIXES)


def _download(md: ModelDeployment, commit: str | None, verify_only: bool) -> Download | None:
    spec = md.spec
    source = model_source(spec.model)
    files = engine_for(spec.engine).weight_files
    # s3:// and gs:// stream (no cache needed); a pvc:// model is on its claim already;
    # an engine without weight_files fetches its own at start.
    if source.pvc_claim is not None or source.object_store or files is None:
        return None
    adapters = tuple(sorted(a.source for a in spec.adapters if "://" not in a.source))
    return Download(
        repo=spec.model,
        revision=requested_revision(spec.args),
        commit=commit,
        files=files,
        adapters=adapters,
        verify_only=verify_only,
    )


def cache_plan(
    md: ModelDeployment, config: PlatformConfig, commit: str | None = None
) -> CachePlan | None:
    """None without spec.cache; SpecError for a ReadWriteOnce default with more than one
    possible replica (the CRD refuses it only when the spec states the mode)."""
    cache = md.spec.cache
    if cache is None:
        return None
    mode, field = access_mode(md, config)
    check_cache_access_mode(md.spec, mode, field)
    claim = cache.claim_name or own_claim_name(md.name, mode)
    download = _download(md, commit, verify_only=mode == READ_ONLY_MANY)
    plan = CachePlan(
        claim_name=claim,
        access_mode=mode,
        own_claim=cache.claim_name is None,
        download=download,
        job_name=None,
    )
    if download is None:
        return plan
    name = job_name(md.name, download_job_spec(md, plan, config))
    return replace(plan, job_name=name)


def job_name(name: str, job_spec: dict[str, Any]) -> str:
    """`<name, cut to 40>-weights-<hash of the Job's spec>`: a Job's pod template cannot
    change, so any change of what the download does (repo, revision, files, claim,
    image, token) is a new Job, and an edit of anything else keeps the finished one."""
    digest = hashlib.sha256(json.dumps(job_spec, sort_keys=True).encode()).hexdigest()
    return f"{name[:JOB_NAME_PREFIX_MAX].rstrip('-')}-weights-{digest[:_HASH_CHARS]}"


def render_claim(
    md: ModelDeployment, plan: CachePlan, config: PlatformConfig, metadata: dict[str, Any]
) -> dict[str, Any] | None:
    """The operator's own claim; None for a named one (someone else's, never written)."""
    cache = md.spec.cache
    if cache is None or not plan.own_claim:
        return None
    spec: dict[str, Any] = {
        "accessModes": [plan.access_mode],
        "resources": {"requests": {"storage": cache.size}},
    }
    storage_class = cache.storage_class_name or config.cache.storage_class_name
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {**metadata, "name": plan.claim_name},
        "spec": spec,
    }


def downloader_args(download: Download) -> list[str]:
    args = ["--repo", download.repo, "--revision", download.revision]
    if download.commit is not None:
        args += ["--commit", download.commit]
    for pattern in download.files.allow:
        args += ["--allow", pattern]
    for pattern in download.files.ignore:
        args += ["--ignore", pattern]
    for adapter in download.adapters:
        args += ["--adapter", adapter]
    if download.verify_only:
        args.append("--verify-only")
    return args


def _downloader_env(md: ModelDeployment, config: PlatformConfig) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": "HF_HOME", "value": CACHE_MOUNT},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if config.cache.hub_endpoint is not None:
        env.append({"name": "HF_ENDPOINT", "value": config.cache.hub_endpoint})
    ref = md.spec.hf_token_secret_ref
    if ref is not None:
        env.append(
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}
        )
    return env


def download_job_spec(
    md: ModelDeployment, plan: CachePlan, config: PlatformConfig
) -> dict[str, Any]:
    """The download Job's spec (its name is a hash of it)."""
    download = plan.download
    assert download is not None
    read_only = {"readOnly": True} if download.verify_only else {}
    pod_labels = {
        WEIGHTS_FOR_LABEL: md.name,
        "app.kubernetes.io/name": "openmodel-weights",
        "app.kubernetes.io/managed-by": "openmodel",
    }
    container = {
        "name": DOWNLOAD_CONTAINER,
        "image": config.cache.downloader_image,
        "command": ["python", "-m", DOWNLOADER_MODULE],
        "args": downloader_args(download),
        "env": _downloader_env(md, config),
        "volumeMounts": [{"name": "cache", "mountPath": CACHE_MOUNT, **read_only}],
        # The downloader's last line (its result, or why it failed) is read from here.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    }
    placement: dict[str, Any] = {}
    if config.cache.download_node_selector:
        placement["nodeSelector"] = dict(config.cache.download_node_selector)
    if config.cache.download_tolerations:
        placement["tolerations"] = [t.to_k8s() for t in config.cache.download_tolerations]
    return {
        "backoffLimit": config.cache.download_backoff_limit,
        "activeDeadlineSeconds": config.cache.download_timeout_seconds,
        # A 401, a 404, a full disk: retrying cannot help, the Job fails at once. A pod
        # evicted by a drain is not counted as a failure.
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": DOWNLOAD_CONTAINER,
                        "operator": "In",
                        "values": list(PERMANENT_EXIT_CODES),
                    },
                },
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]
        },
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                "containers": [container],
                **placement,
                "volumes": [
                    {
                        "name": "cache",
                        "persistentVolumeClaim": {"claimName": plan.claim_name, **read_only},
                    }
                ],
            },
        },
    }


def render_download_job(
    md: ModelDeployment, plan: CachePlan, config: PlatformConfig, metadata: dict[str, Any]
) -> dict[str, Any] | None:
    """The Job that fills (or checks) the cache before the engine starts; None when
    nothing is fetched."""
    if plan.download is None or plan.job_name is None:
        return None
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {**metadata, "name": plan.job_name},
        "spec": download_job_spec(md, plan, config),
    }


def engine_cache_env(plan: CachePlan | None) -> list[dict[str, str]]:
    """What the engine is told when its weights were fetched for it: nothing leaves at start."""
    if plan is None or plan.download is None:
        return []
    return [{"name": "HF_HUB_OFFLINE", "value": "1"}]


_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_UNITS = {
    None: 1,
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}  # fmt: skip


def quantity_bytes(text: str) -> int:
    """A storage quantity as the CRD's pattern allows it (`200Gi`, `1.5T`, `1000`)."""
    match = _QUANTITY.match(text)
    if match is None:
        raise SpecError("spec.cache.size", f"must be a quantity such as 200Gi, got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def check_cache_size(
    md: ModelDeployment, plan: CachePlan | None, weight_bytes: float, source: str
) -> None:
    """Refuse an own claim too small for the checkpoint's weights (the safetensors
    index's `total_size` when the checkpoint has one; `source` says where it came from)."""
    cache = md.spec.cache
    if cache is None or plan is None or not plan.own_claim or plan.download is None:
        return
    size = quantity_bytes(cache.size)
    if size < weight_bytes:
        gib = weight_bytes / 2**30
        raise SpecError(
            "spec.cache.size",
            f"{cache.size} cannot hold the checkpoint's weights ({gib:.1f} GiB, {source}): "
            f"raise it to at least {gib * 1.1:.0f}Gi",
            reason="CacheTooSmall",
        )
