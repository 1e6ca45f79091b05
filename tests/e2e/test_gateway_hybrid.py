"""External models and overflow through the gateway, on the real API server.

A second real vLLM stands for a paid API: started outside the cluster on a loopback
address, with `--api-key` (an OpenAI-compatible server no one here wrote), serving the
tiny model as `upstream-tiny`. An ExternalModel names it, its key in a Secret. A real
vLLM ModelDeployment at zero (through the operator, on the process nodes) overflows to
it. With the official OpenAI SDK and one base URL (the session's gateway):
- the first requests to the model at zero are answered by the external model at once,
  marked `x-openmodel-overflow` and counted; /demand counts them as held; the operator
  wakes the model; once its pod is ready, requests go to it;
- then the self-hosted model and the external one are both answered, streams included,
  each answer carrying the name the client sent;
- the key never shows in the gateway's or the operator's log, an event, /v1/models or a
  status.
Faults: a timeout, a wrong key (the real vLLM's 401), a 429 with Retry-After, a stream cut
mid-way (a small upstream of ours for the shapes vLLM cannot produce), and a key the
gateway cannot read. Privacy: a caller of a namespace labelled private gets 403 (a gateway
with authentication enforced), and a ModelDeployment in a private namespace never
overflows, even with its `Overflow` condition True.

The `Overflow` condition is the operator's verdict (docs/api.md); the tests apply it
under a field manager of their own, standing in for it, so that the gateway's side is
tested on its own.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web
from kubernetes import client
from openai.types.chat import ChatCompletionMessageParam

from openmodel.kube import calls as kube

from harness import Cluster, NotYet, create_namespace, delete_namespace, wait_for
from harness.k8s import service_account_token
from harness.ports import free_port
from harness.process import Component
from openmodel_fixtures import (
    GROUP,
    VERSION,
    GatewayProcess,
    OperatorProcess,
    create_md,
    get_md,
    start_gateway,
)
from real_engine.cluster_objects import engine_namespace, ready_pods
from real_engine.cpu import CPU_ARGS, CPU_ENV, START_TIMEOUT
from real_engine.fixtures import engine_env

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]

KEY = "sk-hybrid-e2e-5f1c9a7d3b2e8f40"  # the external vLLM's --api-key
WRONG_KEY = "sk-wrong-e2e-0a9b8c7d6e5f4a3b"
UPSTREAM_MODEL = "upstream-tiny"
EXTERNAL = "ext-tiny-hybrid"  # the ExternalModel's served name
SELF_HOSTED = "hybrid-tiny"
MD_NAME = "hybrid"
PROMPT: list[ChatCompletionMessageParam] = [{"role": "user", "content": "the cat and the dog"}]
XM_PLURAL = "externalmodels"
VERDICT_MANAGER = "e2e-overflow-verdict"


# --- the external upstreams ---


@pytest.fixture(scope="module")
def upstream_vllm(vllm_env: Path, tiny_model: Path, cluster: Cluster) -> Iterator[str]:
    """The stand-in paid API: `vllm serve` on loopback with a required bearer key; its
    base URL (…/v1)."""
    port = free_port()
    argv = [
        str(vllm_env / "bin" / "vllm"),
        "serve",
        str(tiny_model),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        KEY,
        "--served-model-name",
        UPSTREAM_MODEL,
        "--max-model-len",
        "1024",
        *CPU_ARGS,
    ]
    env = {**engine_env(), **{e["name"]: e["value"] for e in CPU_ENV}}
    engine = Component("external-vllm", argv, cluster.workdir / "external-vllm.log")
    engine.start(env=env)

    def healthy() -> bool | NotYet:
        engine.raise_if_exited()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return r.status == 200
        except OSError as e:
            return NotYet(str(e))

    try:
        wait_for(healthy, START_TIMEOUT, "the external vLLM to answer /health", interval=1.0)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        engine.stop(timeout=20)


@dataclass
class FaultUpstream:
    url: str  # …/v1
    seen: list[str]  # the upstream model of each request


def _fault_app(seen: list[str]) -> web.Application:
    """An OpenAI-shaped upstream answering each fault by the model it is asked for."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append(body["model"])
        if body["model"] == "slow":
            await asyncio.sleep(30)
        if body["model"] == "limited":
            return web.json_response(
                {"error": {"message": "rate limited", "type": "requests"}},
                status=429,
                headers={"Retry-After": "17"},
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for word in ("one", "two"):
            event = {"id": "x", "model": body["model"], "choices": [{"delta": {"content": word}}]}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        assert request.transport is not None
        request.transport.close()  # cut mid-way: no [DONE]
        return response

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


@pytest.fixture(scope="module")
def fault_upstream() -> Iterator[FaultUpstream]:
    seen: list[str] = []
    loop = asyncio.new_event_loop()
    port = free_port()
    runner = web.AppRunner(_fault_app(seen), handler_cancellation=True, shutdown_timeout=1.0)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, name="fault-upstream", daemon=True)
    thread.start()
    yield FaultUpstream(f"http://127.0.0.1:{port}/v1", seen)
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


# --- cluster objects ---


def key_secret(api: client.ApiClient, namespace: str, name: str, key: str) -> None:
    client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            data={"key": base64.b64encode(key.encode()).decode()},
        ),
    )


def external_model(
    api: client.ApiClient,
    namespace: str,
    name: str,
    base_url: str,
    upstream: str,
    secret: str,
    served: str | None = None,
    timeout_s: int = 120,
) -> None:
    spec: dict[str, Any] = {
        "baseURL": base_url,
        "upstreamModel": upstream,
        "apiKeySecretRef": {"name": secret, "key": "key"},
        "timeoutSeconds": timeout_s,
        "price": {"promptPerMillionTokens": 2.5, "completionPerMillionTokens": 10.0},
    }
    if served is not None:
        spec["servedModelName"] = served
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ExternalModel",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, XM_PLURAL, body
    )


def overflow_allowed_by_the_operator(api: client.ApiClient, namespace: str, name: str) -> None:
    """Wait for the session operator's verdict `Overflow` True on this generation."""

    def allowed() -> bool | NotYet:
        md = get_md(api, namespace, name)
        found = [
            c
            for c in (md.get("status") or {}).get("conditions") or []
            if c.get("type") == "Overflow"
        ]
        verdict = found[0] if found else {}
        return (
            verdict.get("status") == "True"
            and verdict.get("observedGeneration") == md["metadata"]["generation"]
        ) or NotYet(verdict)

    wait_for(allowed, 30, f"the operator to allow {namespace}/{name}'s overflow")


def allow_overflow(api: client.ApiClient, namespace: str, name: str) -> None:
    """A forged verdict `Overflow` True for the ModelDeployment's generation (to show
    that the gateway's own check of a private namespace holds whatever the status says)."""
    generation = get_md(api, namespace, name)["metadata"]["generation"]
    status = {
        "conditions": [
            {
                "type": "Overflow",
                "status": "True",
                "reason": "Allowed",
                "message": "the e2e test stands in for the operator",
                "observedGeneration": generation,
                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
        ]
    }
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "status": status,
    }
    kube.apply(api, body, field_manager=VERDICT_MANAGER, subresource="status")


def real_md(namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": MD_NAME, "namespace": namespace},
        "spec": {
            "model": "pvc://tiny/model",
            "servedModelName": SELF_HOSTED,
            "gpu": {"type": "nvidia-a10g", "count": 1},
            "maxModelLen": 1024,
            "args": CPU_ARGS,
            "env": CPU_ENV,
            "autoscaling": {
                "minReplicas": 0,
                "maxReplicas": 1,
                "targetQueueDepth": 4,
                "scaleToZeroAfterSeconds": 900,
            },
            "gateway": {"overflow": {"model": EXTERNAL}},
        },
    }


@dataclass
class Answer:
    status: int
    headers: Any  # http.client.HTTPMessage: case-insensitive
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


def post(url: str, body: dict[str, Any], token: str | None = None, timeout: float = 60) -> Answer:
    """POST a JSON body (with a bearer token when given); any status is an Answer."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, json.dumps(body).encode(), headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return Answer(r.status, r.headers, r.read().decode())
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers, e.read().decode())


def sdk(gw: GatewayProcess, key: str = "unused-auth-is-off") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0, timeout=60)


def metrics_text(gw: GatewayProcess) -> str:
    with urllib.request.urlopen(f"{gw.metrics_url}/metrics", timeout=10) as r:
        return str(r.read().decode())


def metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}", 1)[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def demand_of(gw: GatewayProcess, namespace: str, name: str) -> dict[str, Any]:
    with urllib.request.urlopen(gw.demand_url, timeout=10) as r:
        models = json.loads(r.read())["models"]
    return next((m for m in models if (m["namespace"], m["name"]) == (namespace, name)), {})


def listed(gw: GatewayProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{gw.url}/v1/models", timeout=10) as r:
        return {m["id"]: m for m in json.loads(r.read())["data"]}


@pytest.fixture(scope="module")
def hybrid(
    api_client: client.ApiClient,
    cluster: Cluster,
    tiny_model: Path,
    upstream_vllm: str,
    operator: OperatorProcess,
    gateway: GatewayProcess,
) -> Iterator[str]:
    """The namespace: the ExternalModel (its key in a Secret) and the real ModelDeployment
    at zero that overflows to it, both listed by the gateway."""
    with engine_namespace(api_client, cluster, "e2e-hybrid", tiny_model) as namespace:
        key_secret(api_client, namespace, "upstream-key", KEY)
        external_model(
            api_client,
            namespace,
            "ext-tiny",
            upstream_vllm,
            UPSTREAM_MODEL,
            "upstream-key",
            served=EXTERNAL,
        )
        create_md(api_client, real_md(namespace))
        overflow_allowed_by_the_operator(api_client, namespace, MD_NAME)
        wait_for(
            lambda: {EXTERNAL, SELF_HOSTED} <= listed(gateway).keys() or NotYet(listed(gateway)),
            30,
            "the gateway to list the external and the self-hosted model",
        )
        yield namespace


# --- the must-show ---


def test_overflow_then_both_models_through_one_base_url_and_the_key_never_shows(
    api_client: client.ApiClient, hybrid: str, gateway: GatewayProcess, operator: OperatorProcess
) -> None:
    namespace = hybrid
    openai_client = sdk(gateway)
    core = client.CoreV1Api(api_client)
    assert ready_pods(core, namespace, MD_NAME) == []

    # At zero: answered at once by the external model, marked, counted, and held in /demand.
    started = time.monotonic()
    raw = openai_client.chat.completions.with_raw_response.create(
        model=SELF_HOSTED, messages=PROMPT, max_tokens=4, temperature=0
    )
    first_answer_s = time.monotonic() - started
    answer = raw.parse()
    assert raw.headers["x-openmodel-overflow"] == EXTERNAL
    assert answer.model == SELF_HOSTED and answer.choices[0].message.content
    print(f"first overflowed answer in {first_answer_s:.2f}s")
    assert first_answer_s < 30, first_answer_s
    demand = demand_of(gateway, namespace, MD_NAME)
    assert demand.get("held", 0) >= 1, demand
    with openai_client.chat.completions.with_streaming_response.create(
        model=SELF_HOSTED,
        messages=PROMPT,
        max_tokens=4,
        stream=True,
    ) as streamed:
        assert streamed.headers["x-openmodel-overflow"] == EXTERNAL
        chunks = list(streamed.parse())
    assert chunks and {c.model for c in chunks} == {SELF_HOSTED}
    text = metrics_text(gateway)
    overflowed = metric_sum(
        text,
        "openmodel_gateway_overflow_requests_total",
        namespace=namespace,
        model_deployment=MD_NAME,
        external_model=EXTERNAL,
        reason="starting",
    )
    assert overflowed >= 2, overflowed

    # The operator wakes the model (the overflowed requests count as demand).
    def woken() -> bool | NotYet:
        pods = ready_pods(core, namespace, MD_NAME)
        return bool(pods) or NotYet(demand_of(gateway, namespace, MD_NAME))

    wait_for(
        woken,
        START_TIMEOUT + 120,
        "the model at zero to wake on overflowed demand and its pod to be Ready",
        interval=1.0,
    )

    def answered_in_cluster() -> bool | NotYet:
        raw = openai_client.chat.completions.with_raw_response.create(
            model=SELF_HOSTED, messages=PROMPT, max_tokens=4, temperature=0
        )
        return "x-openmodel-overflow" not in raw.headers or NotYet("still overflowing")

    woke_s = time.monotonic() - started
    wait_for(answered_in_cluster, 30, "requests to move to the ready replica", interval=0.5)
    moved_s = time.monotonic() - started
    print(f"pod Ready {woke_s:.1f}s after the first request; served in cluster at {moved_s:.1f}s")

    # One base URL, both models, plain and streamed, each with the name the client sent.
    for model, route in ((SELF_HOSTED, None), (EXTERNAL, "external")):
        raw = openai_client.chat.completions.with_raw_response.create(
            model=model, messages=PROMPT, max_tokens=4, temperature=0
        )
        assert raw.headers.get("x-openmodel-route") == route
        assert "x-openmodel-overflow" not in raw.headers
        answer = raw.parse()
        assert answer.model == model and answer.usage is not None
        chunks = list(
            openai_client.chat.completions.create(
                model=model,
                messages=PROMPT,
                max_tokens=4,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert {c.model for c in chunks} == {model}
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    text = metrics_text(gateway)
    cost = metric_sum(
        text,
        "openmodel_gateway_external_cost_total",
        namespace=namespace,
        external_model="ext-tiny",
    )
    assert cost > 0, cost
    assert (
        metric_sum(
            text,
            "openmodel_gateway_usage_completion_tokens_total",
            namespace=namespace,
            model_deployment="ext-tiny",
            model=EXTERNAL,
        )
        > 0
    )

    # /v1/models lists the external model with its owner, and nothing of its key.
    models = listed(gateway)
    assert models[EXTERNAL]["owned_by"] == namespace
    assert models[EXTERNAL]["openmodel"] == {
        "kind": "ExternalModel",
        "upstream_model": UPSTREAM_MODEL,
        "external": True,
    }
    assert_key_nowhere(api_client, namespace, gateway, operator, json.dumps(models))


def assert_key_nowhere(
    api: client.ApiClient,
    namespace: str,
    gateway: GatewayProcess,
    operator: OperatorProcess,
    *also: str,
) -> None:
    custom = client.CustomObjectsApi(api)
    events = client.CoreV1Api(api).list_namespaced_event(namespace)
    places = {
        "the gateway's log": gateway.log_path.read_text(errors="replace"),
        "the operator's log": operator.log_path.read_text(errors="replace"),
        "the events": json.dumps(api.sanitize_for_serialization(events)),
        "the ExternalModel's status": json.dumps(
            custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, XM_PLURAL, "ext-tiny"
            ).get("status")
        ),
        "the ModelDeployment's status": json.dumps(get_md(api, namespace, MD_NAME).get("status")),
        **{f"answer {i}": text for i, text in enumerate(also)},
    }
    for where, text in places.items():
        for secret in (KEY, KEY[3:19]):
            assert secret not in text, f"the key shows in {where}"


# --- faults ---


def test_upstream_faults_answer_clearly_and_never_show_the_key(
    api_client: client.ApiClient,
    hybrid: str,
    upstream_vllm: str,
    fault_upstream: FaultUpstream,
    gateway: GatewayProcess,
    operator: OperatorProcess,
) -> None:
    namespace = hybrid
    key_secret(api_client, namespace, "wrong-key", WRONG_KEY)
    key_secret(api_client, namespace, "fault-key", "sk-fault-unused")
    external_model(
        api_client, namespace, "ext-wrong-key", upstream_vllm, UPSTREAM_MODEL, "wrong-key"
    )
    external_model(
        api_client, namespace, "ext-no-secret", upstream_vllm, UPSTREAM_MODEL, "no-such-secret"
    )
    for shape in ("slow", "limited", "cut"):
        external_model(
            api_client,
            namespace,
            f"ext-{shape}",
            fault_upstream.url,
            shape,
            "fault-key",
            timeout_s=2,
        )
    names = {"ext-wrong-key", "ext-no-secret", "ext-slow", "ext-limited", "ext-cut"}
    wait_for(
        lambda: names <= listed(gateway).keys() or NotYet(sorted(listed(gateway))),
        30,
        "the gateway to list the faulty external models",
    )
    url = f"{gateway.url}/v1/chat/completions"

    def chat(model: str) -> Answer:
        return post(url, {"messages": PROMPT, "max_tokens": 4, "model": model})

    # 401 from the real vLLM (a wrong key): 502 naming the ExternalModel, no key.
    wrong = chat("ext-wrong-key")
    error = wrong.json()["error"]
    assert wrong.status == 502 and error["code"] == "external_auth_failed", wrong.text
    assert f"{namespace}/ext-wrong-key" in error["message"] and "wrong-key" in error["message"]
    assert WRONG_KEY not in wrong.text and WRONG_KEY[3:12] not in wrong.text
    # The SDK raises it as the gateway said it.
    with pytest.raises(openai.APIStatusError) as raised:
        sdk(gateway).chat.completions.create(model="ext-wrong-key", messages=PROMPT)
    assert raised.value.status_code == 502 and "ext-wrong-key" in str(raised.value)

    # A key the gateway cannot read: fails closed, naming the Secret.
    missing = chat("ext-no-secret")
    assert missing.status == 503, missing.text
    assert missing.json()["error"]["code"] == "external_key_unavailable"
    assert "no-such-secret" in missing.text

    # No answer begun within timeoutSeconds: 504.
    started = time.monotonic()
    slow = chat("ext-slow")
    waited = time.monotonic() - started
    assert slow.status == 504 and slow.json()["error"]["code"] == "upstream_timeout"
    assert f"{namespace}/ext-slow" in slow.text and 2 <= waited < 10, waited

    # 429 passes through with its Retry-After.
    limited = chat("ext-limited")
    assert limited.status == 429 and limited.headers["Retry-After"] == "17"
    assert limited.headers["x-openmodel-route"] == "external"

    # A stream cut mid-way: the client's stream is cut too, and it is counted.
    with pytest.raises(http.client.IncompleteRead):
        post(url, {"messages": PROMPT, "model": "ext-cut", "stream": True})
    assert fault_upstream.seen.count("cut") == 1
    text = metrics_text(gateway)
    for model, reason in (
        ("ext-wrong-key", "external_auth_failed"),
        ("ext-no-secret", "external_key_unavailable"),
        ("ext-slow", "upstream_timeout"),
        ("ext-cut", "upstream_cut"),
    ):
        assert metric_sum(text, "openmodel_gateway_errors_total", model=model, reason=reason) >= 1
    cut_logged = rf"ExternalModel {namespace}/ext-cut \(`ext-cut`\) cut a response mid-way"
    assert re.search(cut_logged, gateway.log_path.read_text())
    assert_key_nowhere(api_client, namespace, gateway, operator, wrong.text)


# --- privacy ---


def test_a_private_namespace_never_sends_data_out(
    api_client: client.ApiClient,
    cluster: Cluster,
    hybrid: str,
    gateway: GatewayProcess,
    api_key_crd: None,
) -> None:
    core = client.CoreV1Api(api_client)
    rbac = client.RbacAuthorizationV1Api(api_client)
    caller_ns = create_namespace(api_client, "e2e-hybrid-caller")
    private_ns = create_namespace(api_client, "e2e-hybrid-private")
    door = start_gateway(
        cluster.kubeconfig,
        cluster.workdir,
        name="gateway-hybrid-auth",
        auth={"mode": "enforce", "accessCacheSeconds": 1},
    )
    try:
        # A caller allowed to use the external model, from a namespace not yet private.
        core.create_namespaced_service_account(caller_ns, {"metadata": {"name": "client"}})
        rule = client.V1PolicyRule(api_groups=[GROUP], resources=[XM_PLURAL], verbs=["use"])
        rbac.create_namespaced_role(
            hybrid, client.V1Role(metadata=client.V1ObjectMeta(name="use-external"), rules=[rule])
        )
        rbac.create_namespaced_role_binding(
            hybrid,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="use-external"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="use-external"
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name="client", namespace=caller_ns)
                ],
            ),
        )
        token = service_account_token(api_client, caller_ns, "client")
        url = f"{door.url}/v1/chat/completions"
        body = {"model": EXTERNAL, "messages": PROMPT, "max_tokens": 4}

        def status() -> int:
            return post(url, body, token).status

        wait_for(lambda: status() == 200 or NotYet(status()), 30, "the caller to be answered")
        core.patch_namespace(caller_ns, {"metadata": {"labels": {"openmodel.dev/data": "private"}}})
        wait_for(lambda: status() == 403 or NotYet(status()), 30, "the private caller refused")
        refused = post(url, body, token).json()["error"]
        assert refused["code"] == "data_must_stay_in"
        assert "openmodel.dev/data=private" in refused["message"]

        # A ModelDeployment in a private namespace with overflow "allowed" is still held.
        core.patch_namespace(
            private_ns, {"metadata": {"labels": {"openmodel.dev/data": "private"}}}
        )
        create_md(
            api_client,
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ModelDeployment",
                "metadata": {"name": "kept-in", "namespace": private_ns},
                "spec": {
                    "model": "Qwen/Qwen2.5-7B-Instruct",
                    "servedModelName": "kept-in-private",
                    "gpu": {"type": "nvidia-l4", "count": 1},
                    "replicas": 0,
                    "gateway": {"overflow": {"model": EXTERNAL}},
                },
            },
        )
        allow_overflow(api_client, private_ns, "kept-in")
        wait_for(
            lambda: "kept-in-private" in listed(gateway) or NotYet(sorted(listed(gateway))),
            30,
            "the gateway to list the private model",
        )
        # Overflowed, the tiny external model would answer within the 3 s; held, no answer.
        with pytest.raises(TimeoutError):
            post(
                f"{gateway.url}/v1/chat/completions",
                {"model": "kept-in-private", "messages": PROMPT, "max_tokens": 2},
                timeout=3,
            )
        assert (
            metric_sum(
                metrics_text(gateway),
                "openmodel_gateway_overflow_requests_total",
                namespace=private_ns,
            )
            == 0
        )
    finally:
        door.stop()
        delete_namespace(api_client, caller_ns)
        delete_namespace(api_client, private_ns)
        for kind in ("role_binding", "role"):
            getattr(rbac, f"delete_namespaced_{kind}")("use-external", hybrid)
