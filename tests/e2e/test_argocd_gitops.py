"""ModelDeployments under a real Argo CD (harness/argocd.py), the session's operator and
a local Git repository made by each test (file://): sync and health of the example,
`argocd app wait --health`, a refusal as Degraded with the operator's message, a commit
that moves the pods to another GPU type, deletion with prune, and the autoscaler under
load with self-heal on, never fought (docs/gitops.md: no ignoreDifferences needed).

OPENMODEL_ARGOCD_LOAD_SECONDS sets how long the autoscaler runs under load with Argo CD
watching (default 40 s here; the issue's 3 minutes: 180, numbers in docs/gitops.md).
"""

from __future__ import annotations

import copy
import itertools
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, watch
from kubernetes.client.exceptions import ApiException

from harness import NotYet, describe_namespace, wait_for
from harness import argocd as argo
from harness.argocd import ArgoCD
from harness.engine_fleet import EngineFleet, LoadGenerator
from openmodel_fixtures import (
    EXAMPLES,
    GROUP,
    PLURAL,
    SMALL_MODEL_SPEC,
    VERSION,
    OperatorProcess,
    condition,
)

pytestmark = [pytest.mark.cluster, pytest.mark.argocd]

LOAD_SECONDS = float(os.environ.get("OPENMODEL_ARGOCD_LOAD_SECONDS", "40"))
GPU_PRODUCT = "nvidia.com/gpu.product"


@dataclass
class GitOps:
    """One test's Git repository (folder ``models/``) and the Application of it."""

    api: client.ApiClient
    argocd: ArgoCD
    namespace: str
    repo: Path
    app_name: str
    url: str = ""
    apps: list[str] = field(default_factory=list)

    @property
    def folder(self) -> Path:
        return self.repo / "models"

    def write_md(self, body: dict[str, Any], file: str = "model.yaml") -> None:
        argo.write_yaml(self.folder / file, body)

    def commit(self, message: str) -> str:
        return argo.commit(self.repo, message)

    def create_app(self) -> None:
        if not self.url:
            self.url = argo.git_repo(self.repo)
        argo.create_application(
            self.api, argo.application(self.app_name, self.url, "models", self.namespace)
        )
        self.apps.append(self.app_name)

    def app(self) -> dict[str, Any]:
        return argo.get_application(self.api, self.app_name)

    def describe(self) -> str:
        try:
            app = argo.summary(self.app())
        except ApiException as error:
            app = f"Application {self.app_name}: {error.status} {error.reason}"
        return f"{app}\n{describe_namespace(self.api, self.namespace)}"

    def wait_app(self, sync: str, health: str, timeout: float = 60, revision: str = "") -> Any:
        def reached() -> dict[str, Any] | NotYet:
            app = self.app()
            status = app.get("status") or {}
            seen = (status.get("sync", {}).get("status"), status.get("health", {}).get("status"))
            at = status.get("sync", {}).get("revision", "")
            if seen == (sync, health) and (not revision or at == revision):
                return app
            return NotYet(f"{seen} at {at[:8]}")

        return wait_for(reached, timeout, self.describe)


def example_md(name: str = "llama70b-awq") -> dict[str, Any]:
    """examples/llama70b-awq.yaml as a user would commit it to a folder of an
    Application: no namespace (the Application's destination gives it)."""
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / "llama70b-awq.yaml").read_text())
    body["metadata"].pop("namespace", None)
    body["metadata"]["name"] = name
    return body


@pytest.fixture
def gitops(
    api_client: client.ApiClient,
    argocd: ArgoCD,
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> Iterator[GitOps]:
    ops = GitOps(api_client, argocd, namespace, tmp_path / "repo", f"md-{namespace}"[:53])
    ops.repo.mkdir()
    yield ops
    for name in ops.apps:
        argo.delete_application(api_client, name, cascade=True)
    for name in ops.apps:
        wait_for(lambda n=name: argo.application_gone(api_client, n), 60, f"{name} deleted")
    argocd.check_alive()


class Recorder:
    """Every state of an object a watch delivers (Argo CD's writes included), in order."""

    def __init__(self, list_call: Any, *args: Any, name: str, pick: Any) -> None:
        self._stop = threading.Event()
        self.states: list[Any] = []
        self._thread = threading.Thread(
            target=self._run, args=(list_call, args, name, pick), daemon=True
        )
        self._thread.start()

    def _run(self, list_call: Any, args: Any, name: str, pick: Any) -> None:
        while not self._stop.is_set():
            w = watch.Watch()
            try:
                for event in w.stream(
                    list_call, *args, field_selector=f"metadata.name={name}", timeout_seconds=5
                ):
                    obj = event["object"]
                    state = pick(obj if isinstance(obj, dict) else obj.to_dict())
                    if not self.states or self.states[-1] != state:
                        self.states.append(state)
                    if self._stop.is_set():
                        break
            except ApiException:
                time.sleep(0.2)  # the watch is reopened: a gap, not a synchronisation
            finally:
                w.stop()

    def stop(self) -> list[Any]:
        self._stop.set()
        self._thread.join(timeout=10)
        return self.states


def app_health_state(app: dict[str, Any]) -> tuple[str, str]:
    """(sync status, health status) of an Application."""
    status = app.get("status") or {}
    return (
        (status.get("sync") or {}).get("status", ""),
        (status.get("health") or {}).get("status", ""),
    )


def md_pods(api: client.ApiClient, namespace: str, name: str) -> list[Any]:
    selector = f"openmodel.dev/model-deployment={name}"
    return client.CoreV1Api(api).list_namespaced_pod(namespace, label_selector=selector).items


def gpu_products_of_ready_pods(api: client.ApiClient, namespace: str, name: str) -> list[str]:
    core = client.CoreV1Api(api)
    products = []
    for pod in md_pods(api, namespace, name):
        ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
        if pod.metadata.deletion_timestamp is None and ready and pod.spec.node_name:
            labels = core.read_node(pod.spec.node_name).metadata.labels or {}
            products.append(labels.get(GPU_PRODUCT, "?"))
    return products


def test_example_synced_healthy_moved_by_a_commit_and_pruned(
    api_client: client.ApiClient, gitops: GitOps
) -> None:
    ns, name = gitops.namespace, "llama70b-awq"
    gitops.write_md(example_md(name))
    recorder = Recorder(
        client.CustomObjectsApi(api_client).list_namespaced_custom_object,
        argo.GROUP, argo.VERSION, argo.NAMESPACE, "applications",
        name=gitops.app_name, pick=app_health_state,
    )  # fmt: skip
    md_health: list[tuple[str, str]] = []  # the ModelDeployment's, as Argo CD's API shows it

    def healthy() -> dict[str, Any] | NotYet:
        seen = gitops.argocd.resource_health(gitops.app_name, "ModelDeployment", name)
        if seen[0] and (not md_health or md_health[-1] != seen):
            md_health.append(seen)
        app = gitops.app()
        return app if app_health_state(app) == ("Synced", "Healthy") else NotYet(seen)

    started = time.monotonic()
    try:
        gitops.create_app()
        app = wait_for(healthy, 90, gitops.describe, interval=0.1)
    finally:
        states = recorder.stop()
    to_healthy = time.monotonic() - started
    print(
        f"Application created -> Synced/Healthy in {to_healthy:.1f} s; "
        f"Application states {states}; ModelDeployment health {md_health}"
    )
    # Health went through Progressing (the operator not there yet, or pods starting)
    # before Healthy; Healthy once the ModelDeployment is Ready.
    healths = [h for _, h in states]
    assert "Progressing" in healths, states
    assert healths.index("Progressing") < len(healths) - 1 - healths[::-1].index("Healthy")
    progressing = {m for h, m in md_health if h == "Progressing"}
    assert progressing <= {"waiting for the operator", "0/1 replicas ready"}, md_health
    md = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, ns, PLURAL, name
    )
    assert condition(md, "Ready")["status"] == "True"
    assert gitops.argocd.resource_health(gitops.app_name, "ModelDeployment", name) == (
        "Healthy",
        condition(md, "Ready")["message"],
    )
    assert condition(md, "Ready")["message"] == "1/1 replicas ready"
    assert "ignoreDifferences" not in app["spec"]  # docs/gitops.md: none needed
    first_revision = app["status"]["sync"]["revision"]

    # The CLI waits on the same health.
    waited = gitops.argocd.cli("app", "wait", gitops.app_name, "--health", "--timeout", "60")
    assert waited.returncode == 0, f"{waited.stdout}\n{waited.stderr}"
    assert "Healthy" in waited.stdout, waited.stdout
    products = gpu_products_of_ready_pods(api_client, ns, name)
    assert products and all("H100" in p for p in products), products

    # A commit that changes gpu.type: the pods move to A100 nodes; Healthy again.
    body = example_md(name)
    body["spec"]["gpu"]["type"] = "nvidia-a100-80gb"
    gitops.write_md(body)
    revision = gitops.commit("llama70b-awq: move to A100 80GB")
    assert revision != first_revision
    moved_at = time.monotonic()
    argo.hard_refresh(api_client, gitops.app_name)

    def on_a100() -> list[str] | NotYet:
        products = gpu_products_of_ready_pods(api_client, ns, name)
        pods = md_pods(api_client, ns, name)
        if len(pods) == 1 and products and all("A100" in p for p in products):
            return products
        return NotYet(f"ready on {products}; pods {[p.metadata.name for p in pods]}")

    wait_for(on_a100, 90, gitops.describe)
    gitops.wait_app("Synced", "Healthy", timeout=60, revision=revision)
    print(f"commit -> pods on A100 and Healthy in {time.monotonic() - moved_at:.1f} s")

    # Deleting the Application (its finalizer: cascade, with prune) deletes the
    # ModelDeployment, and with it, through owner references, its children.
    argo.delete_application(api_client, gitops.app_name, cascade=True)
    wait_for(lambda: argo.application_gone(api_client, gitops.app_name), 60, gitops.describe)
    apps, core = client.AppsV1Api(api_client), client.CoreV1Api(api_client)

    def all_gone() -> bool | NotYet:
        left = [
            *(f"md/{m['metadata']['name']}" for m in client.CustomObjectsApi(api_client)
              .list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)["items"]),
            *(f"deployment/{d.metadata.name}" for d in apps.list_namespaced_deployment(ns).items),
            *(f"service/{s.metadata.name}" for s in core.list_namespaced_service(ns).items),
            *(f"pod/{p.metadata.name}" for p in core.list_namespaced_pod(ns).items),
        ]  # fmt: skip
        return not left or NotYet(left)

    wait_for(all_gone, 60, gitops.describe)


def test_unknown_accelerator_is_degraded_with_the_operators_message(
    api_client: client.ApiClient, gitops: GitOps
) -> None:
    body = example_md("mi300")
    body["spec"]["gpu"]["type"] = "amd-mi300x"
    gitops.write_md(body)
    gitops.create_app()
    # Synced: the API server accepted it; only the operator can tell it cannot be served.
    app = gitops.wait_app("Synced", "Degraded", timeout=60)
    md = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
        GROUP, VERSION, gitops.namespace, PLURAL, "mi300"
    )
    degraded = condition(md, "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "UnknownAccelerator")
    health, message = gitops.argocd.resource_health(gitops.app_name, "ModelDeployment", "mi300")
    assert health == "Degraded", argo.summary(app)
    assert message == degraded["message"], argo.summary(app)
    assert message.startswith("spec.gpu.type: unknown accelerator 'amd-mi300x'; known: "), message
    # The CLI shows the message in the detailed tree (REASON); the plain `app get`
    # table's MESSAGE column is the sync result ("... created").
    shown = gitops.argocd.cli("app", "get", gitops.app_name, "-o", "tree=detailed")
    assert shown.returncode == 0, shown.stderr
    line = next(ln for ln in shown.stdout.splitlines() if "ModelDeployment/mi300" in ln)
    assert "Degraded" in line and message in line, shown.stdout


# -- the autoscaler under load, with self-heal on ---------------------------------------

AUTOSCALED = "llama8b"


def autoscaled_md() -> dict[str, Any]:
    body = example_md(AUTOSCALED)
    body["spec"].update(
        copy.deepcopy(SMALL_MODEL_SPEC),
        # As test_autoscaling.py: 12 clients on pods of 3 slots, 1 waiting per replica.
        autoscaling={
            "minReplicas": 1,
            "maxReplicas": 4,
            "targetQueueDepth": 1,
            "scaleDownStabilizationSeconds": 4,
        },
    )
    return body


def deployment_state(dep: dict[str, Any]) -> tuple[int, int]:
    return (dep["metadata"]["generation"], dep["spec"]["replicas"])


def test_autoscaler_under_load_is_never_fought_by_self_heal(
    api_client: client.ApiClient, gitops: GitOps
) -> None:
    ns = gitops.namespace
    gitops.write_md(autoscaled_md())
    gitops.create_app()
    app = gitops.wait_app("Synced", "Healthy", timeout=90)
    assert app["spec"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "ignoreDifferences" not in app["spec"]
    history_before = len(app["status"].get("history") or [])
    custom, apps = client.CustomObjectsApi(api_client), client.AppsV1Api(api_client)
    md_generation = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, AUTOSCALED)[
        "metadata"
    ]["generation"]

    fleet = EngineFleet(api_client, ns, AUTOSCALED, slots=3, service_time=0.3).start()
    deployment = Recorder(
        apps.list_namespaced_deployment, ns, name=AUTOSCALED, pick=deployment_state
    )
    application = Recorder(
        custom.list_namespaced_custom_object,
        argo.GROUP, argo.VERSION, argo.NAMESPACE, "applications",
        name=gitops.app_name,
        pick=lambda a: (app_health_state(a)[0], len((a.get("status") or {}).get("history") or [])),
    )  # fmt: skip
    load = None
    reconciled: set[str] = set()
    try:
        wait_for(lambda: len(fleet.urls()) == 1 or NotYet(fleet.urls()), 60, gitops.describe)
        load = LoadGenerator(fleet, clients=12, max_seconds=LOAD_SECONDS + 30).start()
        end = time.monotonic() + LOAD_SECONDS
        while time.monotonic() < end:
            status = gitops.app().get("status") or {}
            reconciled.add(status.get("reconciledAt", ""))
            time.sleep(1.0)  # sampling how often Argo CD compared, not synchronisation
    finally:
        # What happened under load only: the recorders stop before the load does.
        dep_states = deployment.stop()
        app_states = application.stop()
        if load is not None:
            load.stop()
        fleet.stop()
    replicas = [r for _, r in dep_states]
    generations = [g for g, _ in dep_states]
    changes = sum(1 for a, b in itertools.pairwise(replicas) if a != b)
    reversals = sum(
        1
        for a, b, c in zip(replicas, replicas[1:], replicas[2:], strict=False)
        if (b - a) * (c - b) < 0
    )
    print(
        f"{LOAD_SECONDS:.0f} s of load: Deployment (generation, replicas) {dep_states}; "
        f"{changes} replica changes, {reversals} reversals, generation "
        f"{generations[0]} -> {generations[-1]}; Application (sync, history) {app_states}; "
        f"{len(reconciled)} comparisons by Argo CD"
    )
    # The autoscaler did scale.
    assert max(replicas) >= 3, dep_states
    # Argo CD saw it all and found nothing to fix: Synced throughout, no sync ran.
    assert {s for s, _ in app_states} == {"Synced"}, app_states
    assert {h for _, h in app_states} == {history_before}, app_states
    assert len(reconciled) >= 2, reconciled
    # Nobody but the autoscaler wrote the Deployment's spec: every generation is a
    # replicas change, and Git's replicas (1) never came back while the load ran.
    assert generations[-1] - generations[0] == changes, dep_states
    first_up = next(i for i, r in enumerate(replicas) if r > 1)
    assert 1 not in replicas[first_up:], dep_states
    # No flip-flop: up, then at most one settling step down (4 -> 3), never back up.
    assert reversals <= 1, dep_states
    md = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, AUTOSCALED)
    assert md["metadata"]["generation"] == md_generation  # nobody wrote the spec
    gitops.wait_app("Synced", "Healthy", timeout=30)
