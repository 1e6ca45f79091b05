"""The weights cache against the real API server and controllers (docs/api.md, Weights
cache): the claim and the download Job are accepted as rendered; the engine Deployment
is created only once the Job has completed, and then runs offline; `kubectl get md`
shows the Cache column; a revision change starts a new download and retires the old Job
(the Job controller removes it: the operator holds no delete right).

The Job's pod lands on a KWOK CPU node, whose pod-complete stage finishes it (exit 0)
a few seconds after it runs: the downloader itself is tested in-process against the
fake Hub (tests/unit/test_weights_download.py), not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness import NotYet, describe_namespace, wait_for
from harness.k8s import bind_cache_volume
from openmodel_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    condition,
    create_md,
    get_md,
)

NAME = "cached"
CLAIM = f"{NAME}-cache-rwx"
TIMEOUT_SECONDS = 60

pytestmark = pytest.mark.cluster


def cached_md(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": "Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4",
            "engine": "vllm",
            "quantization": "gptq",
            "gpu": {"type": "nvidia-l4", "count": 1},
            "maxModelLen": 8192,
            "cache": {"size": "1Gi"},
        },
    }


def test_the_engine_waits_for_its_weights_then_runs_offline(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    tmp_path: Any,
) -> None:
    core = client.CoreV1Api(api_client)
    batch = client.BatchV1Api(api_client)
    apps = client.AppsV1Api(api_client)
    volume = bind_cache_volume(api_client, namespace, CLAIM, "1Gi", Path(tmp_path))

    def explain() -> str:
        return f"{describe_namespace(api_client, namespace)}\n{operator.log_tail()}"

    try:
        create_md(api_client, cached_md(namespace))

        def job_created() -> Any:
            jobs = batch.list_namespaced_job(namespace).items
            return jobs[0] if jobs else NotYet("no download Job")

        job = wait_for(job_created, TIMEOUT_SECONDS, explain)
        assert job.metadata.name.startswith(f"{NAME}-weights-")
        assert job.spec.pod_failure_policy.rules[0].action == "FailJob"
        assert job.spec.template.spec.volumes[0].persistent_volume_claim.claim_name == CLAIM
        claim = core.read_namespaced_persistent_volume_claim(CLAIM, namespace)
        assert claim.spec.access_modes == ["ReadWriteMany"]

        # Until the Job completes there is no engine; once it has, there is one, offline.
        def engine_or_waiting() -> Any:
            deployments = apps.list_namespaced_deployment(namespace).items
            done = batch.read_namespaced_job(job.metadata.name, namespace).status.succeeded
            if deployments:
                assert done, "the engine Deployment exists before its download completed"
                return deployments[0]
            status = (get_md(api_client, namespace, NAME) or {}).get("status") or {}
            assert (status.get("cache") or {}).get("phase") != "Failed", status
            return NotYet(status.get("cache"))

        deployment = wait_for(engine_or_waiting, TIMEOUT_SECONDS, explain)
        env = {e.name: e.value for e in deployment.spec.template.spec.containers[0].env}
        assert env["HF_HUB_OFFLINE"] == "1"

        def ready_cache() -> Any:
            status = (get_md(api_client, namespace, NAME) or {}).get("status") or {}
            cache = status.get("cache") or {}
            return cache if cache.get("phase") == "Ready" else NotYet(cache)

        cache = wait_for(ready_cache, TIMEOUT_SECONDS, explain)
        assert cache["job"] == job.metadata.name and cache["claimName"] == CLAIM

        # The printer column, as kubectl get asks for it.
        method, url, headers, _, _ = api_client.param_serialize(
            "GET",
            f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{NAME}",
            header_params={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
            auth_settings=["BearerToken"],
        )
        table = json.loads(api_client.call_api(method, url, header_params=headers).read())
        names = [c["name"] for c in table["columnDefinitions"]]
        assert table["rows"][0]["cells"][names.index("Cache")] == "Ready"

        # A new revision: a new download; the engine is not changed before it completes,
        # and the old Job is retired (deadline + TTL 0) and removed by the Job controller.
        client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, NAME, {"spec": {"args": ["--revision", "v2"]}}
        )

        def old_job_gone() -> Any:
            names = {j.metadata.name for j in batch.list_namespaced_job(namespace).items}
            if job.metadata.name in names or len(names) != 1:
                return NotYet(names)
            return names

        wait_for(old_job_gone, TIMEOUT_SECONDS, explain)

        def engine_on_v2() -> Any:
            found = apps.read_namespaced_deployment(NAME, namespace)
            args = found.spec.template.spec.containers[0].args
            return found if "v2" in args else NotYet(args)

        wait_for(engine_on_v2, TIMEOUT_SECONDS, explain)
    finally:
        core.delete_persistent_volume(volume)


def test_a_download_that_cannot_be_placed_says_why_and_starts_no_engine(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # No volume for the claim (no provisioner here): the scheduler cannot place the pod.
    create_md(api_client, cached_md(namespace))

    def degraded() -> Any:
        md = get_md(api_client, namespace, NAME) or {}
        found = condition(md, "Degraded")
        return found if found.get("reason") == "DownloadUnschedulable" else NotYet(found)

    found = wait_for(
        degraded,
        TIMEOUT_SECONDS,
        lambda: f"{describe_namespace(api_client, namespace)}\n{operator.log_tail()}",
    )
    assert "PersistentVolumeClaim" in found["message"], found
    assert client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items == []
