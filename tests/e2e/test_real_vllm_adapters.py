"""LoRA adapters on the real vLLM: declared on the ModelDeployment, loaded at runtime on
every ready pod without restarts, and a status read back from each engine's /v1/models.

The adapters are made by the test with peft for the session's tiny model
(real_engine/tiny_adapter.py) and live beside it on the PV the claim `tiny` is bound
to, so `pvc://tiny/adapters/<name>` is what a user would write. One engine start for
the module, one restart (the killed engine), one more pod for the scale-out.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness import (
    Cluster,
    NotYet,
    describe_namespace,
    wait_for,
)
from openmodel_fixtures import GROUP, PLURAL, VERSION, OperatorProcess, condition, create_md, get_md
from real_engine.cluster_objects import (
    engine_namespace,
    ready_pods,
)
from real_engine.cpu import CPU_ARGS, CPU_ENV, START_TIMEOUT

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]

NAME = "tiny-lora"
SERVED = "tiny"


def adapter(name: str) -> dict[str, str]:
    return {"name": name, "source": f"pvc://tiny/adapters/{name}"}


@pytest.fixture(scope="module")
def adapters_dir(tiny_adapters: Path) -> Path:
    """a1..a4 (rank 8, different seeds) and `big` (rank 64 > maxRank 16)."""
    return tiny_adapters


@pytest.fixture(scope="module")
def lora_namespace(
    api_client: client.ApiClient, cluster: Cluster, tiny_model: Path, adapters_dir: Path
) -> Any:
    with engine_namespace(api_client, cluster, "e2e-real-lora", tiny_model) as namespace:
        yield namespace


def lora_md(namespace: str, names: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": namespace},
        "spec": {
            "model": "pvc://tiny/model",
            "servedModelName": SERVED,
            "gpu": {"type": "nvidia-a10g", "count": 1},
            "maxModelLen": 1024,
            "args": CPU_ARGS,
            "env": CPU_ENV,
            "adapters": [adapter(n) for n in names],
            "lora": {"maxRank": 16, "maxAdapters": 4},
        },
    }


def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def first_logprob(ip: str, model: str) -> tuple[int, float | None]:
    """A chat completion's status and its first token's logprob at temperature 0 (random
    weights often give the same greedy text with and without an adapter; the logprobs
    always differ)."""
    status, body = post(
        f"http://{ip}:8000/v1/chat/completions",
        {
            "model": model,
            "messages": [{"role": "user", "content": "the cat and the dog"}],
            "max_tokens": 1,
            "temperature": 0,
            "seed": 7,
            "logprobs": True,
        },
    )
    if status != 200:
        return status, None
    return status, float(body["choices"][0]["logprobs"]["content"][0]["logprob"])


def listed(ip: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{ip}:8000/v1/models", timeout=10) as r:
        return {m["id"]: m for m in json.loads(r.read())["data"]}


def patch_spec(api: client.ApiClient, namespace: str, spec: dict[str, Any]) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, NAME, {"spec": spec}
    )


def adapters_loaded(
    api: client.ApiClient, namespace: str, names: set[str], pods: int = 1
) -> dict[str, Any] | NotYet:
    md = get_md(api, namespace, NAME)
    entries = {a["name"]: a for a in (md.get("status") or {}).get("adapters") or []}
    if set(entries) == names and all(
        e["loadedPods"] == pods and e["readyPods"] == pods for e in entries.values()
    ):
        return md
    return NotYet({"adapters": entries, "ready": condition(md, "AdaptersReady")})


@pytest.fixture(scope="module")
def serving(api_client: client.ApiClient, lora_namespace: str, operator: OperatorProcess) -> Any:
    create_md(api_client, lora_md(lora_namespace, ["a1", "a2"]))
    md = wait_for(
        lambda: adapters_loaded(api_client, lora_namespace, {"a1", "a2"}),
        START_TIMEOUT,
        lambda: describe_namespace(api_client, lora_namespace),
        interval=1,
    )
    return md


def the_pod(core: client.CoreV1Api, namespace: str) -> client.V1Pod:
    pods = ready_pods(core, namespace, NAME)
    assert len(pods) == 1, [p.metadata.name for p in pods]
    return pods[0]


def test_declared_adapters_are_listed_and_answer_differently(
    api_client: client.ApiClient, lora_namespace: str, serving: Any
) -> None:
    assert condition(serving, "AdaptersReady")["status"] == "True"
    assert serving["status"]["adaptersReady"] == "2/2"
    pod = the_pod(client.CoreV1Api(api_client), lora_namespace)
    models = listed(pod.status.pod_ip)
    assert models["a1"]["parent"] == SERVED and models["a2"]["parent"] == SERVED
    base = first_logprob(pod.status.pod_ip, SERVED)
    one = first_logprob(pod.status.pod_ip, "a1")
    two = first_logprob(pod.status.pod_ip, "a2")
    assert base[0] == one[0] == two[0] == 200
    assert len({base[1], one[1], two[1]}) == 3, (base, one, two)


def test_add_and_remove_without_restarting_the_pod(
    api_client: client.ApiClient, lora_namespace: str, serving: Any
) -> None:
    core = client.CoreV1Api(api_client)
    before = the_pod(core, lora_namespace)
    restarts = before.status.container_statuses[0].restart_count
    started = time.monotonic()
    patch_spec(
        api_client, lora_namespace, {"adapters": [adapter("a1"), adapter("a2"), adapter("a3")]}
    )
    ip = before.status.pod_ip
    wait_for(lambda: first_logprob(ip, "a3")[0] == 200 or NotYet("a3 not served"), 60, "a3")
    print(f"\nadapter a3: spec patch -> first 200 in {time.monotonic() - started:.2f} s")
    wait_for(
        lambda: adapters_loaded(api_client, lora_namespace, {"a1", "a2", "a3"}), 60, "a3 status"
    )
    patch_spec(api_client, lora_namespace, {"adapters": [adapter("a2"), adapter("a3")]})
    wait_for(lambda: first_logprob(ip, "a1")[0] == 404 or NotYet("a1 still served"), 60, "a1 gone")
    wait_for(lambda: adapters_loaded(api_client, lora_namespace, {"a2", "a3"}), 60, "status")
    assert first_logprob(ip, "a2")[0] == 200 and first_logprob(ip, "a3")[0] == 200
    after = the_pod(core, lora_namespace)
    assert after.metadata.uid == before.metadata.uid
    assert after.status.container_statuses[0].restart_count == restarts


def test_broken_adapter_is_reported_and_the_rest_serve(
    api_client: client.ApiClient, lora_namespace: str, serving: Any
) -> None:
    patch_spec(
        api_client, lora_namespace, {"adapters": [adapter("a2"), adapter("a3"), adapter("big")]}
    )

    def reported() -> dict[str, Any] | NotYet:
        md = get_md(api_client, lora_namespace, NAME)
        big = next((a for a in md["status"].get("adapters") or [] if a["name"] == "big"), {})
        if "greater than max_lora_rank" in big.get("lastError", ""):
            return md
        return NotYet(md["status"].get("adapters"))

    md = wait_for(reported, 60, lambda: describe_namespace(api_client, lora_namespace))
    ready = condition(md, "AdaptersReady")
    assert ready["status"] == "False" and ready["reason"] == "AdapterFailed", ready
    assert "big" in ready["message"]
    events = client.CoreV1Api(api_client).list_namespaced_event(lora_namespace).items
    assert any(e.reason == "AdapterFailed" and "big" in e.message for e in events)
    ip = the_pod(client.CoreV1Api(api_client), lora_namespace).status.pod_ip
    assert first_logprob(ip, "a2")[0] == 200 and first_logprob(ip, SERVED)[0] == 200
    patch_spec(api_client, lora_namespace, {"adapters": [adapter("a2"), adapter("a3")]})
    wait_for(lambda: adapters_loaded(api_client, lora_namespace, {"a2", "a3"}), 60, "recovered")


def test_a_restarted_engine_gets_its_adapters_back(
    api_client: client.ApiClient, lora_namespace: str, serving: Any
) -> None:
    core = client.CoreV1Api(api_client)
    pod = the_pod(core, lora_namespace)
    status = pod.status.container_statuses[0]
    os.kill(int(status.container_id.removeprefix("process://")), signal.SIGKILL)

    def back() -> bool | NotYet:
        pods = ready_pods(core, lora_namespace, NAME)
        if not pods or pods[0].status.container_statuses[0].restart_count <= status.restart_count:
            return NotYet("not restarted and ready yet")
        return set(listed(pods[0].status.pod_ip)) >= {"a2", "a3"} or NotYet("adapters missing")

    wait_for(back, START_TIMEOUT, lambda: describe_namespace(api_client, lora_namespace))
    wait_for(lambda: adapters_loaded(api_client, lora_namespace, {"a2", "a3"}), 60, "status")


def test_scale_out_pod_gets_every_adapter_before_it_counts(
    api_client: client.ApiClient, lora_namespace: str, serving: Any
) -> None:
    core = client.CoreV1Api(api_client)
    patch_spec(api_client, lora_namespace, {"replicas": 2})
    seen: list[tuple[int, int]] = []

    def both() -> dict[str, Any] | NotYet:
        md = get_md(api_client, lora_namespace, NAME)
        entries = (md.get("status") or {}).get("adapters") or []
        pods = ready_pods(core, lora_namespace, NAME)
        having = sum(1 for p in pods if set(listed(p.status.pod_ip)) >= {"a2", "a3"})
        # Counted loaded never exceeds the pods whose engine lists the adapters.
        seen.extend((e["loadedPods"], having) for e in entries)
        return adapters_loaded(api_client, lora_namespace, {"a2", "a3"}, pods=2)

    wait_for(both, START_TIMEOUT, lambda: describe_namespace(api_client, lora_namespace))
    assert all(counted <= having + 1 for counted, having in seen), seen
    for pod in ready_pods(core, lora_namespace, NAME):
        assert {"a2", "a3"} <= set(listed(pod.status.pod_ip))
