"""The operator against the real control plane: apply, edit, scale, delete, refuse."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from harness import NotYet, describe_namespace, wait_for
from openmodel_fixtures import (
    GROUP,
    PLURAL,
    VERSION,
    OperatorProcess,
    condition,
    create_md,
    get_md,
    load_example,
)

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = {"NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-80GB-PCIe"}


def md_api(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


def patch_spec(api: client.ApiClient, ns: str, name: str, spec: dict[str, Any]) -> None:
    md_api(api).patch_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name, {"spec": spec})


def pods_by_product(api: client.ApiClient, ns: str, name: str) -> dict[str, str]:
    """Running, ready, non-terminating pods -> GPU product of their node."""
    core = client.CoreV1Api(api)
    out = {}
    for pod in core.list_namespaced_pod(
        ns, label_selector=f"openmodel.dev/model-deployment={name}"
    ).items:
        if (
            pod.metadata.deletion_timestamp
            or pod.status.phase != "Running"
            or not pod.spec.node_name
        ):
            continue
        node = core.read_node(pod.spec.node_name)
        out[pod.metadata.name] = (node.metadata.labels or {}).get("nvidia.com/gpu.product", "")
    return out


def ready_md(api: client.ApiClient, ns: str, name: str, replicas: int) -> Any:
    def check() -> dict[str, Any] | NotYet:
        md = get_md(api, ns, name)
        st = md.get("status") or {}
        ready = condition(md, "Ready")
        if (
            st.get("observedGeneration") == md["metadata"]["generation"]
            and ready.get("status") == "True"
            and st.get("readyReplicas") == replicas
        ):
            return md
        return NotYet({"status": st, "generation": md["metadata"]["generation"]})

    return check


def test_example_is_reconciled_onto_h100(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_md(api_client, load_example("llama70b-awq.yaml", namespace))
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)

    def children() -> bool | NotYet:
        try:
            apps.read_namespaced_deployment("llama70b-awq", namespace)
            core.read_namespaced_service("llama70b-awq", namespace)
        except ApiException as e:
            return NotYet(f"{e.status} {e.reason}")
        return True

    wait_for(children, 10, "Deployment and Service within seconds")
    md = wait_for(
        ready_md(api_client, namespace, "llama70b-awq", 1),
        60,
        lambda: describe_namespace(api_client, namespace),
    )
    assert md["status"]["endpoint"] == (
        f"http://llama70b-awq.{namespace}.svc.cluster.local:8000/v1"
    )
    assert md["status"]["labelSelector"] == "openmodel.dev/model-deployment=llama70b-awq"
    assert md["status"]["gpu"] == "2x nvidia-h100-80gb"
    placed = pods_by_product(api_client, namespace, "llama70b-awq")
    assert list(placed.values()) == [H100], placed
    dep = apps.read_namespaced_deployment("llama70b-awq", namespace)
    c = dep.spec.template.spec.containers[0]
    assert c.resources.limits == {"nvidia.com/gpu": "2"}
    assert "--tensor-parallel-size" in c.args
    svc = core.read_namespaced_service("llama70b-awq", namespace)
    assert svc.spec.ports[0].port == 8000


def test_gpu_type_and_engine_edits_roll_out(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_md(api_client, load_example("llama70b-awq.yaml", namespace, replicas=2))
    wait_for(
        ready_md(api_client, namespace, "llama70b-awq", 2),
        60,
        lambda: describe_namespace(api_client, namespace),
    )

    patch_spec(api_client, namespace, "llama70b-awq", {"gpu": {"type": "nvidia-a100-80gb"}})

    def on_a100() -> dict[str, str] | NotYet:
        placed = pods_by_product(api_client, namespace, "llama70b-awq")
        ok = len(placed) == 2 and set(placed.values()) <= A100
        return placed if ok else NotYet(placed)

    wait_for(on_a100, 60, lambda: describe_namespace(api_client, namespace))
    wait_for(ready_md(api_client, namespace, "llama70b-awq", 2), 60, "Ready after the move")

    patch_spec(api_client, namespace, "llama70b-awq", {"engine": "tgi"})
    apps = client.AppsV1Api(api_client)

    def switched() -> Any:
        c = apps.read_namespaced_deployment(
            "llama70b-awq", namespace
        ).spec.template.spec.containers[0]
        return c if "--model-id" in (c.args or []) else NotYet(c.args)

    c = wait_for(switched, 30, "the Deployment to switch to TGI")
    assert "text-generation-inference" in c.image
    assert c.command == ["text-generation-launcher"]
    assert c.ports[0].container_port == 80
    assert c.args[c.args.index("--quantize") + 1] == "awq"
    assert c.args[c.args.index("--num-shard") + 1] == "2"
    wait_for(ready_md(api_client, namespace, "llama70b-awq", 2), 60, "Ready on TGI")


def test_delete_removes_children(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_md(api_client, load_example("llama70b-awq.yaml", namespace))
    wait_for(ready_md(api_client, namespace, "llama70b-awq", 1), 60, "Ready")
    md_api(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "llama70b-awq"
    )
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)

    def gone() -> bool | NotYet:
        left = [d.metadata.name for d in apps.list_namespaced_deployment(namespace).items]
        left += [s.metadata.name for s in core.list_namespaced_service(namespace).items]
        return not left or NotYet(left)

    wait_for(gone, 60, "children to be garbage-collected")


def test_hand_edit_of_child_is_put_back(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_md(api_client, load_example("llama70b-awq.yaml", namespace))
    wait_for(ready_md(api_client, namespace, "llama70b-awq", 1), 60, "Ready")
    apps = client.AppsV1Api(api_client)
    apps.patch_namespaced_deployment(
        "llama70b-awq",
        namespace,
        {
            "spec": {
                "template": {"spec": {"containers": [{"name": "engine", "image": "evil:latest"}]}}
            }
        },
    )

    def restored() -> str | NotYet:
        image = (
            apps.read_namespaced_deployment("llama70b-awq", namespace)
            .spec.template.spec.containers[0]
            .image
        )
        return image if image.startswith("vllm/vllm-openai:") else NotYet(image)

    wait_for(restored, 30, "the operator to put the image back")


@pytest.mark.parametrize(
    ("spec_patch", "field", "words"),
    [
        ({"engine": "ollama"}, "spec.engine", "Unsupported value"),
        ({"replicas": -1}, "spec.replicas", "greater than or equal to 0"),
        (
            {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
            "spec.autoscaling.minReplicas",
            "minReplicas must be less than or equal to maxReplicas",
        ),
        ({"engine": "tgi", "quantization": "gguf"}, "spec.quantization", "gguf"),
        (
            {"gpu": {"type": "nvidia-h100-80gb", "count": 0}},
            "spec.gpu.count",
            "greater than or equal to 1",
        ),
        ({"model": None}, "spec.model", "Required value"),
        (
            {"adapters": [{"name": "a", "source": "org/a"}, {"name": "a", "source": "org/b"}]},
            "spec.adapters[1]",
            "Duplicate value",
        ),
        (
            {"adapters": [{"name": "Bad_Name", "source": "org/a"}]},
            "spec.adapters[0].name",
            "should match",
        ),
        (
            {"servedModelName": "chat", "adapters": [{"name": "chat", "source": "org/a"}]},
            "spec.adapters",
            "must differ from the served model name",
        ),
        (
            {
                "adapters": [{"name": f"a{i}", "source": f"org/a{i}"} for i in range(3)],
                "lora": {"maxAdapters": 2},
            },
            "spec.adapters",
            "more entries than spec.lora.maxAdapters",
        ),
        ({"adapters": [{"name": "a", "source": "ftp://x"}]}, "spec.adapters[0].source", "pvc://"),
    ],
    ids=[
        "unknown-engine",
        "negative-replicas",
        "min-over-max",
        "tgi-gguf",
        "gpu-count-0",
        "missing-model",
        "adapter-duplicate-name",
        "adapter-bad-name",
        "adapter-named-like-the-model",
        "adapters-over-max",
        "adapter-bad-source",
    ],
)
def test_invalid_specs_are_refused_at_apply(
    api_client: client.ApiClient,
    namespace: str,
    crd: None,
    spec_patch: dict[str, Any],
    field: str,
    words: str,
) -> None:
    body = load_example("llama70b-awq.yaml", namespace, **spec_patch)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    with pytest.raises(ApiException) as err:
        create_md(api_client, body)
    assert err.value.status == 422
    assert field in err.value.body, err.value.body
    assert words in err.value.body, err.value.body


def test_unknown_accelerator_is_a_condition_and_running_pods_stay(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_md(api_client, load_example("llama70b-awq.yaml", namespace))
    wait_for(ready_md(api_client, namespace, "llama70b-awq", 1), 60, "Ready")
    apps = client.AppsV1Api(api_client)
    before = apps.read_namespaced_deployment("llama70b-awq", namespace)

    patch_spec(api_client, namespace, "llama70b-awq", {"gpu": {"type": "nvidia-h9000"}})

    def degraded() -> dict[str, Any] | NotYet:
        md = get_md(api_client, namespace, "llama70b-awq")
        c = condition(md, "Degraded")
        ok = (
            md["status"].get("observedGeneration") == md["metadata"]["generation"]
            and c.get("reason") == "UnknownAccelerator"
        )
        return md if ok else NotYet(md.get("status"))

    md = wait_for(degraded, 30, "Degraded/UnknownAccelerator")
    assert "nvidia-h9000" in condition(md, "Degraded")["message"]
    assert "spec.gpu.type" in condition(md, "Degraded")["message"]
    assert condition(md, "Ready")["status"] == "True"  # the old version still serves
    after = apps.read_namespaced_deployment("llama70b-awq", namespace)
    assert after.metadata.generation == before.metadata.generation
    assert after.spec.template == before.spec.template
    placed = pods_by_product(api_client, namespace, "llama70b-awq")
    assert list(placed.values()) == [H100]


def test_more_gpus_than_any_node_is_unschedulable(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    # A model the sizing catalogue does not know, so only the scheduler judges the count.
    body = load_example(
        "llama70b-awq.yaml",
        namespace,
        model="acme/private-model",
        quantization="none",
        gpu={"type": "nvidia-h100-80gb", "count": 9},
    )
    create_md(api_client, body)

    def unschedulable() -> dict[str, Any] | NotYet:
        c = condition(get_md(api_client, namespace, "llama70b-awq"), "Degraded")
        return c if c.get("reason") == "Unschedulable" else NotYet(c)

    c = wait_for(unschedulable, 60, lambda: describe_namespace(api_client, namespace))
    assert "nvidia.com/gpu" in c["message"]
    assert c["status"] == "True"


def test_scale_subresource(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    create_md(api_client, load_example("llama70b-awq.yaml", namespace))
    wait_for(ready_md(api_client, namespace, "llama70b-awq", 1), 60, "Ready")
    # What `kubectl scale md/llama70b-awq --replicas=3` does.
    md_api(api_client).patch_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, "llama70b-awq", {"spec": {"replicas": 3}}
    )
    wait_for(
        ready_md(api_client, namespace, "llama70b-awq", 3),
        60,
        lambda: describe_namespace(api_client, namespace),
    )
    scale = md_api(api_client).get_namespaced_custom_object_scale(
        GROUP, VERSION, namespace, PLURAL, "llama70b-awq"
    )
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "openmodel.dev/model-deployment=llama70b-awq"
    assert (
        client.AppsV1Api(api_client)
        .read_namespaced_deployment("llama70b-awq", namespace)
        .spec.replicas
        == 3
    )
