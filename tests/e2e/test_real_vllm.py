"""The real vLLM engine in the loop: ModelDeployments whose pods really run.

The pods land on the harness's process nodes (``harness/process_node``: type
nvidia-a10g, one GPU each), which run the container's command and args exactly as the
operator rendered them, with the vLLM CPU environment standing for the image's
filesystem. The model is the tiny one the session makes, on a hostPath PV bound to the
PVC the ModelDeployment names (``pvc://tiny/model``). What is asserted is what a
platform engineer would check on a real cluster: readiness from the engine's own
/health, the OpenAI API, rollouts, crash reporting, and autoscaling on its queue.

vLLM starts in this module: 1 (served) + 1 (rollout) + 1 (the autoscaler's second
replica) full starts of ~30 s and ~3 GiB each, at most two at a time; the crash tests
stop at argument parsing or config loading (the bad flag's crash loop runs on the other
process node while the served engine loads). The served ModelDeployment is the one
every serving test uses, the autoscaling test included (it turns autoscaling on and off
again): each test takes the pod that serves when it runs, and leaves one Ready pod.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness import (
    Cluster,
    NotYet,
    create_namespace,
    delete_namespace,
    describe_namespace,
    wait_for,
)
from harness.netpol import Listener, connects_from
from harness.process_node.policy import outbound_connections
from harness.process_node.sandbox import Sandbox
from openmodel_fixtures import GROUP, PLURAL, VERSION, OperatorProcess, condition, create_md, get_md
from real_engine.cluster_objects import (
    engine_namespace,
    model_volume,
    ready_pods,
)
from real_engine.cpu import CPU_ARGS, CPU_ENV, START_TIMEOUT
from real_engine.metrics_contract import compare_families, scrape
from real_engine.openai_contract import compare_acceptance, compare_streams

pytestmark = [pytest.mark.cluster, pytest.mark.real_engine]

SERVED = "tiny"


def real_md(
    namespace: str,
    name: str,
    *,
    args: list[str] | None = None,
    max_model_len: int = 1024,
    autoscaling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": "pvc://tiny/model",
        "engine": "vllm",
        "servedModelName": SERVED,
        "gpu": {"type": "nvidia-a10g", "count": 1},
        "maxModelLen": max_model_len,
        "args": CPU_ARGS + (args or []),
        "env": CPU_ENV,
    }
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def http_json(url: str, body: dict[str, Any] | None = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.status == 200, response.status
        return json.loads(response.read())


def process_cmdline(pod: client.V1Pod) -> list[str]:
    """The running engine's command line, read from /proc (containerID process://PID)."""
    status = pod.status.container_statuses[0]
    pid = int(status.container_id.removeprefix("process://"))
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def pid_alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def engine_pid(pod: client.V1Pod) -> int:
    return int(pod.status.container_statuses[0].container_id.removeprefix("process://"))


@pytest.fixture(scope="module")
def real_namespace(api_client: client.ApiClient, cluster: Cluster) -> Iterator[str]:
    with engine_namespace(api_client, cluster, "e2e-real-vllm") as name:
        yield name


@pytest.fixture(scope="module")
def tiny_claim(api_client: client.ApiClient, real_namespace: str, tiny_model: Path) -> str:
    """The PVC `tiny` in the module's namespace, bound to the tiny model's PV."""
    return model_volume(api_client, real_namespace, tiny_model)


@dataclass
class Timeline:
    """What was seen while the engine loaded: (seconds, MD Ready, pod started, pod ready)."""

    samples: list[tuple[float, str, bool, bool]] = field(default_factory=list)


@dataclass
class Served:
    """The served ModelDeployment; `pod` is the first one, whose loading `timeline` saw
    (a rollout or a scale-down may have replaced it since: `serving_pod` is the one now)."""

    namespace: str
    name: str
    timeline: Timeline
    pod: client.V1Pod


# 2 slots per engine: the autoscaling test's 4 clients make a queue on one engine. The
# other tests send one request at a time.
MAX_NUM_SEQS = ["--max-num-seqs", "2"]


@dataclass
class BadFlag:
    """The bad-flag ModelDeployment as seen once its engine had crashed and restarted
    twice, and its Deployment's generation then."""

    md: dict[str, Any]
    deployment_generation: int


BAD_FLAG = "tiny-badflag"


@pytest.fixture(scope="module")
def started(
    api_client: client.ApiClient,
    real_namespace: str,
    tiny_claim: str,
    operator: OperatorProcess,
) -> tuple[Served, BadFlag]:
    """One real vLLM serving the tiny model from a PVC, Ready, the loading recorded; and,
    on the other process node meanwhile, an engine given a flag vLLM refuses, watched
    until it crash-looped (its back-offs wait out the same seconds as the loading). The
    bad-flag ModelDeployment is deleted before any test runs: its node is free again."""
    core = client.CoreV1Api(api_client)
    create_md(api_client, real_md(real_namespace, BAD_FLAG, args=["--no-such-flag"]))
    name = "tiny-chat"
    create_md(api_client, real_md(real_namespace, name, args=MAX_NUM_SEQS))
    timeline = Timeline()
    started = time.monotonic()

    def ready() -> client.V1Pod | NotYet:
        md = get_md(api_client, real_namespace, name)
        pods = core.list_namespaced_pod(
            real_namespace, label_selector=f"openmodel.dev/model-deployment={name}"
        ).items
        statuses = [p.status.container_statuses[0] for p in pods if p.status.container_statuses]
        pod_started = bool(statuses) and bool(statuses[0].started)
        pod_ready = bool(statuses) and bool(statuses[0].ready)
        md_ready = condition(md, "Ready").get("status", "absent")
        timeline.samples.append((time.monotonic() - started, md_ready, pod_started, pod_ready))
        degraded = condition(md, "Degraded")
        if degraded.get("status") == "True":  # no point waiting out the budget
            raise AssertionError(f"the engine cannot start: {degraded}")
        if md_ready == "True" and pods:
            return pods[0]
        return NotYet({"md": md.get("status"), "pods": [p.status.phase for p in pods]})

    pod = wait_for(
        ready, START_TIMEOUT, lambda: describe_namespace(api_client, real_namespace), interval=1
    )
    crashed = _crash_loop(api_client, real_namespace, BAD_FLAG, restarts=2)
    deployment = client.AppsV1Api(api_client).read_namespaced_deployment(BAD_FLAG, real_namespace)
    bad_flag = BadFlag(crashed, deployment.metadata.generation)
    client.CustomObjectsApi(api_client).delete_namespaced_custom_object(
        GROUP, VERSION, real_namespace, PLURAL, BAD_FLAG
    )

    def bad_flag_gone() -> bool | NotYet:
        pods = core.list_namespaced_pod(
            real_namespace, label_selector=f"openmodel.dev/model-deployment={BAD_FLAG}"
        ).items
        return not pods or NotYet([p.metadata.name for p in pods])

    wait_for(bad_flag_gone, 60, lambda: describe_namespace(api_client, real_namespace))
    return Served(real_namespace, name, timeline, pod), bad_flag


@pytest.fixture(scope="module")
def served(started: tuple[Served, BadFlag]) -> Served:
    return started[0]


@pytest.fixture(scope="module")
def bad_flag(started: tuple[Served, BadFlag]) -> BadFlag:
    return started[1]


def serving_pod(api_client: client.ApiClient, served: Served) -> client.V1Pod:
    """The served ModelDeployment's one Ready pod, as it is when the test runs."""
    core = client.CoreV1Api(api_client)

    def one() -> client.V1Pod | NotYet:
        pods = ready_pods(core, served.namespace, served.name)
        return pods[0] if len(pods) == 1 else NotYet([p.metadata.name for p in pods])

    return wait_for(one, START_TIMEOUT, lambda: describe_namespace(api_client, served.namespace))


def test_not_ready_while_vllm_loads_then_ready(
    api_client: client.ApiClient, served: Served
) -> None:
    # While the weights load the engine does not listen: the startup probe fails for
    # real (the node posts Unhealthy events), and the ModelDeployment is not Ready.
    loading = [s for s in served.timeline.samples if s[2] is False]
    assert loading, f"never saw the pod loading: {served.timeline.samples}"
    assert all(s[1] != "True" for s in loading), served.timeline.samples
    events = client.CoreV1Api(api_client).list_namespaced_event(served.namespace).items
    probe_failures = [
        e.message
        for e in events
        if e.reason == "Unhealthy" and e.involved_object.name == served.pod.metadata.name
    ]
    assert any("Startup probe failed" in m for m in probe_failures), probe_failures
    md = get_md(api_client, served.namespace, served.name)
    status = md["status"]
    assert status["endpoint"] == (
        f"http://{served.name}.{served.namespace}.svc.cluster.local:8000/v1"
    )
    assert status["readyReplicas"] == 1
    assert status["reason"] == "Ready"
    # The process runs the rendered command: `vllm serve <model> ...` from the image.
    argv = process_cmdline(serving_pod(api_client, served))
    assert argv[argv.index("serve") + 1] == "/models/tiny/model", argv
    assert "--served-model-name" in argv and SERVED in argv


def test_openai_api_answers_on_the_pod(api_client: client.ApiClient, served: Served) -> None:
    base = f"http://{serving_pod(api_client, served).status.pod_ip}:8000"
    models = http_json(f"{base}/v1/models")
    assert [m["id"] for m in models["data"]] == [SERVED]
    chat = http_json(
        f"{base}/v1/chat/completions",
        {"model": SERVED, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8},
    )
    assert chat["object"] == "chat.completion"
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["completion_tokens"] >= 1

    body = {"model": SERVED, "prompt": "the cat", "max_tokens": 8, "stream": True}
    request = urllib.request.Request(
        f"{base}/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        lines = [line.decode().strip() for line in response if line.strip()]
    assert lines[-1] == "data: [DONE]", lines
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(line.startswith("data: ") for line in lines)
    assert len(chunks) >= 2, "a stream of one chunk is not streaming"
    assert all(c["object"] == "text_completion" for c in chunks)


def test_the_engine_pod_is_confined_and_opened_no_connection(
    api_client: client.ApiClient, served: Served
) -> None:
    """The NetworkPolicy the operator rendered for a model on a claim (no egress at all),
    enforced by the process node as a network plugin would: the real vLLM opened no
    connection beyond its own pod while it started and served the requests above (its
    telemetry off, offline), and a connection it tries now to an address outside is
    refused, while an unconfined namespace reaches that address."""
    pod = serving_pod(api_client, served)
    md = get_md(api_client, served.namespace, served.name)
    assert md["status"]["egress"] == "Closed"
    assert condition(md, "EgressOpen")["reason"] == "NodeOnly"
    policy = client.NetworkingV1Api(api_client).read_namespaced_network_policy(
        served.name, served.namespace
    )
    assert policy.spec.policy_types == ["Ingress", "Egress"] and not policy.spec.egress
    environ = dict(
        item.split("=", 1)
        for item in Path(f"/proc/{engine_pid(pod)}/environ").read_bytes().decode().split("\0")
        if "=" in item
    )
    for switch in (
        "VLLM_NO_USAGE_STATS",
        "DO_NOT_TRACK",
        "HF_HUB_DISABLE_TELEMETRY",
        "HF_HUB_OFFLINE",
    ):
        assert environ.get(switch) == "1", switch

    netns = Sandbox(ipaddress.IPv4Address(pod.status.pod_ip)).netns
    opened, where = outbound_connections(netns)
    print(f"\nengine pod: {opened} outbound connection(s) since its sandbox was made {where}")
    assert (opened, where) == (0, [])

    # An address outside the cluster (a namespace of its own, routed here only) with a
    # listener, reached from an unconfined namespace, refused from the engine's.
    outside = Sandbox(ipaddress.IPv4Address(f"198.19.{os.getpid() % 200 + 10}.250"))
    bystander = Sandbox(ipaddress.IPv4Address(f"198.19.{os.getpid() % 200 + 10}.251"))
    outside.create()
    bystander.create()
    listener = Listener(outside.netns, 443)
    try:
        assert connects_from(bystander.netns, str(outside.address), 443)
        assert not connects_from(netns, str(outside.address), 443)
        opened, where = outbound_connections(netns)
        assert (opened, where) == (1, [f"{outside.address} . 443"]), (opened, where)
    finally:
        listener.close()
        outside.destroy()
        bystander.destroy()


def test_simulator_metrics_match_the_real_vllm(
    api_client: client.ApiClient, served: Served
) -> None:
    real = scrape(f"http://{serving_pod(api_client, served).status.pod_ip}:8000/metrics")
    problems = compare_families(real, engine="vllm")
    assert not problems, "\n".join(problems)


def test_simulator_streams_match_the_real_vllm(
    api_client: client.ApiClient, served: Served
) -> None:
    problems = compare_streams(f"http://{serving_pod(api_client, served).status.pod_ip}:8000")
    assert not problems, "\n".join(problems)


def test_simulator_accepts_and_refuses_the_requests_the_real_vllm_does(
    api_client: client.ApiClient, served: Served
) -> None:
    problems = compare_acceptance(f"http://{serving_pod(api_client, served).status.pod_ip}:8000")
    assert not problems, "\n".join(problems)


def test_edit_rolls_out_a_new_engine_process(api_client: client.ApiClient, served: Served) -> None:
    core = client.CoreV1Api(api_client)
    old_pod = serving_pod(api_client, served)
    old_pid = engine_pid(old_pod)
    assert "--max-model-len" in process_cmdline(old_pod)
    client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
        GROUP, VERSION, served.namespace, PLURAL, served.name, {"spec": {"maxModelLen": 2048}}
    )

    def rolled_out() -> client.V1Pod | NotYet:
        md = get_md(api_client, served.namespace, served.name)
        pods = ready_pods(core, served.namespace, served.name)
        new = [p for p in pods if p.metadata.uid != old_pod.metadata.uid]
        if (
            condition(md, "Ready").get("status") == "True"
            and md["status"]["observedGeneration"] == md["metadata"]["generation"]
            and len(pods) == 1
            and new
            and not pid_alive(old_pid)
        ):
            return new[0]
        return NotYet(
            {
                "ready pods": [p.metadata.name for p in pods],
                "old engine alive": pid_alive(old_pid),
                "conditions": (md.get("status") or {}).get("conditions"),
            }
        )

    new_pod = wait_for(
        rolled_out, START_TIMEOUT, lambda: describe_namespace(api_client, served.namespace)
    )
    argv = process_cmdline(new_pod)
    assert argv[argv.index("--max-model-len") + 1] == "2048", argv
    models = http_json(f"http://{new_pod.status.pod_ip}:8000/v1/models")
    assert models["data"][0]["max_model_len"] == 2048


def _crash_loop(
    api_client: client.ApiClient, namespace: str, name: str, restarts: int
) -> dict[str, Any]:
    core = client.CoreV1Api(api_client)

    def crashing() -> dict[str, Any] | NotYet:
        md = get_md(api_client, namespace, name)
        pods = core.list_namespaced_pod(
            namespace, label_selector=f"openmodel.dev/model-deployment={name}"
        ).items
        counts = [
            p.status.container_statuses[0].restart_count
            for p in pods
            if p.status.container_statuses
        ]
        degraded = condition(md, "Degraded")
        if counts and max(counts) >= restarts and degraded.get("reason") == "EngineCrashLoop":
            return md
        return NotYet({"restarts": counts, "degraded": degraded})

    return wait_for(crashing, 180, lambda: describe_namespace(api_client, namespace), interval=1)


def test_bad_flag_makes_vllm_exit_and_the_condition_says_why(bad_flag: BadFlag) -> None:
    md = bad_flag.md
    degraded = condition(md, "Degraded")
    assert degraded["status"] == "True"
    assert "exited with code 2" in degraded["message"], degraded
    assert "--no-such-flag" in degraded["message"], degraded
    assert md["status"]["reason"] == "EngineCrashLoop"
    # Nothing else is touched: the operator wrote the Deployment once and leaves it.
    assert bad_flag.deployment_generation == 1


def test_directory_that_is_not_a_model_reaches_a_condition_without_a_loop(
    api_client: client.ApiClient,
    tmp_path: Path,
    cluster: Cluster,
    operator: OperatorProcess,
) -> None:
    namespace = create_namespace(api_client, "e2e-real-notamodel")
    try:
        empty = tmp_path / "models"
        (empty / "model").mkdir(parents=True)
        (empty / "model" / "README.txt").write_text("not a model\n")
        model_volume(api_client, namespace, empty / "model")
        name = "not-a-model"
        create_md(api_client, real_md(namespace, name))
        md = _crash_loop(api_client, namespace, name, restarts=1)
        degraded = condition(md, "Degraded")
        assert "exited with code 1" in degraded["message"], degraded
        assert "last log line" in degraded["message"], degraded
        # No hot loop: over 20 s of crash loop the ModelDeployment is written only when
        # what the pod reports changes (a restart, a new exit), not on every pass.
        core = client.CoreV1Api(api_client)
        versions: set[str] = set()
        restarts_before = _restarts(core, namespace, name)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            versions.add(get_md(api_client, namespace, name)["metadata"]["resourceVersion"])
            time.sleep(0.5)  # sampling the object's versions, not waiting for a state
        restarts = _restarts(core, namespace, name) - restarts_before
        assert len(versions) <= 2 * restarts + 2, (len(versions), restarts)
        assert operator.alive()
    finally:
        delete_namespace(api_client, namespace)


def _restarts(core: client.CoreV1Api, namespace: str, name: str) -> int:
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"openmodel.dev/model-deployment={name}"
    ).items
    return sum(
        p.status.container_statuses[0].restart_count for p in pods if p.status.container_statuses
    )


@dataclass
class RealLoad:
    """Clients sending completions, one after another each, spread over ready pods."""

    core: client.CoreV1Api
    namespace: str
    name: str
    clients: int
    max_seconds: float
    urls: list[str] = field(default_factory=list)
    sent: int = 0
    failed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> RealLoad:
        self._threads = [threading.Thread(target=self._pods, daemon=True)] + [
            threading.Thread(target=self._client, args=(i,), daemon=True)
            for i in range(self.clients)
        ]
        for t in self._threads:
            t.start()
        return self

    def _pods(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            pods = ready_pods(self.core, self.namespace, self.name)
            self.urls = [f"http://{p.status.pod_ip}:8000" for p in pods]
            self._stop.wait(0.5)

    def _client(self, index: int) -> None:
        deadline = time.monotonic() + self.max_seconds
        # ignore_eos keeps every request the same length, so a queue forms steadily.
        body = {"model": SERVED, "prompt": "the cat", "max_tokens": 96, "ignore_eos": True}
        n = index
        while not self._stop.is_set() and time.monotonic() < deadline:
            urls = list(self.urls)
            if not urls:
                self._stop.wait(0.1)
                continue
            n += 1
            try:
                http_json(f"{urls[n % len(urls)]}/v1/completions", body, timeout=60)
                self.sent += 1
            except (urllib.error.URLError, ConnectionError, TimeoutError, AssertionError):
                self.failed += 1  # a pod scaled away under this client

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(70)


@pytest.mark.timeout(900)  # an engine start on a busy machine, then the windows
def test_autoscaling_on_the_real_queue_scales_out_without_cascade_and_back(
    api_client: client.ApiClient, served: Served
) -> None:
    """2 slots per engine (--max-num-seqs 2, the served engine's) and 4 clients: one
    engine has 2 waiting (target 1 per replica -> 2 replicas); two engines hold all 4 in
    flight. maxReplicas 3 leaves room for the cascade peers suffer while the new pod
    loads. Autoscaling is turned on for the served ModelDeployment, on its running
    engine, and off again at the end (spec.replicas, 1, from then on)."""
    namespace, name = served.namespace, served.name
    apps = client.AppsV1Api(api_client)
    core = client.CoreV1Api(api_client)
    custom = client.CustomObjectsApi(api_client)

    def replicas() -> int:
        return int(apps.read_namespaced_deployment(name, namespace).spec.replicas)

    serving_pod(api_client, served)
    autoscaling = {
        "minReplicas": 1,
        "maxReplicas": 3,
        "targetQueueDepth": 1,
        # Long enough to ride over a dip in what a CPU-starved engine admits while its
        # peer loads; short enough for the suite.
        "scaleDownStabilizationSeconds": 30,
    }
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": {"autoscaling": autoscaling}}
    )
    try:
        assert replicas() == 1
        load = RealLoad(core, namespace, name, clients=4, max_seconds=300).start()
        peak = [1]
        try:

            def two_ready() -> bool | NotYet:
                peak[0] = max(peak[0], replicas())
                ready = ready_pods(core, namespace, name)
                return len(ready) == 2 or NotYet({"replicas": replicas(), "ready": len(ready)})

            wait_for(two_ready, START_TIMEOUT, lambda: describe_namespace(api_client, namespace))
            # With both engines serving, the load stays carried by two for a while.
            settle = time.monotonic() + 15
            while time.monotonic() < settle:
                peak[0] = max(peak[0], replicas())
                time.sleep(0.5)  # sampling the replica count, not waiting for a state
            assert peak[0] == 2, f"scaled to {peak[0]}: the loading pod was not counted"
            assert load.sent > 0
        finally:
            load.stop()

        wait_for(
            lambda: replicas() == 1 or NotYet(replicas()),
            120,
            lambda: describe_namespace(api_client, namespace),
        )

        # The autoscaler writes replicas, posts its Event, then writes its status: the
        # status follows the Deployment by a request or two.
        def status_says_one() -> bool | NotYet:
            auto = get_md(api_client, namespace, name)["status"].get("autoscaler") or {}
            return auto.get("desiredReplicas") == 1 or NotYet(auto)

        wait_for(status_says_one, 30, "status.autoscaler.desiredReplicas 1")
    finally:
        # The served ModelDeployment as the other tests expect it: one replica, no
        # autoscaler (a merge patch's null removes the field).
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, {"spec": {"autoscaling": None}}
        )
    serving_pod(api_client, served)
