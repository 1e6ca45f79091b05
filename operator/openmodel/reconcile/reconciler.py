"""The level-based reconcile: observe, plan, apply what differs, rebuild status.

One function serves create, update, resume, child drift and periodic resync. It never
writes a ModelDeployment's spec, and it writes nothing when the world already matches.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.api import API_VERSION, KIND, SpecError, parse_model_deployment
from openmodel.clock import utc_now
from openmodel.config import PlatformConfig
from openmodel.inference_extension.gate import InferenceExtensionGate
from openmodel.kube import calls as kube
from openmodel.kube.events import post_event
from openmodel.model_resolver.state import ModelConfigState
from openmodel.model_resolver.store import ModelConfigStore, model_ref_for
from openmodel.problems import Problem
from openmodel.reconcile.drift import object_holds
from openmodel.reconcile.plan import make_plan
from openmodel.reconcile.render import endpoint, label_selector
from openmodel.reconcile.status import DEGRADED, READY, Observation, build_status, needs_write

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str]


@dataclass
class KeyedLocks:
    """One lock per (namespace, name): a parent event and a child event for the same
    ModelDeployment arrive on different kopf workers and must not interleave."""

    _guard: threading.Lock = field(default_factory=threading.Lock)
    _locks: dict[ObjectKey, threading.Lock] = field(default_factory=dict)

    @contextmanager
    def hold(self, key: ObjectKey) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield

    def forget(self, key: ObjectKey) -> None:
        with self._guard:
            self._locks.pop(key, None)


@dataclass
class OwnWrites:
    """The resourceVersion of the last object each of our own writes produced.

    The watch echoes every write back as an event. An event carrying exactly the
    version we wrote shows nothing we have not already seen (the pass that wrote it also
    rebuilt status from it), so handlers skip it: on a 200-object rollout this saves a
    full pass (four reads) per echo. Any other writer's change has another version.
    """

    _versions: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def record(self, kind: str, written: Mapping[str, Any]) -> None:
        meta = written.get("metadata") or {}
        if meta.get("resourceVersion"):
            key = (kind, meta.get("namespace", ""), meta.get("name", ""))
            self._versions[key] = meta["resourceVersion"]

    def is_echo(self, kind: str, namespace: str, name: str, version: str | None) -> bool:
        return version is not None and self._versions.get((kind, namespace, name)) == version

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._versions.pop((kind, namespace, name), None)


@dataclass
class ReconcileResult:
    applied: list[str]
    status_written: bool
    problem: Problem | None


class Reconciler:
    def __init__(
        self,
        api: client.ApiClient,
        config: PlatformConfig,
        clock: Callable[[], str] = utc_now,
        model_configs: ModelConfigStore | None = None,
    ) -> None:
        self.api = api
        self.config = config
        self.clock = clock
        # config.json resolutions; None: sizing uses the catalogue only.
        self.model_configs = model_configs
        self.locks = KeyedLocks()
        self.own_writes = OwnWrites()
        self.inference_extension = InferenceExtensionGate(api)

    def reconcile_by_name(self, namespace: str, name: str) -> ReconcileResult | None:
        with self.locks.hold((namespace, name)):
            body = kube.get(self.api, API_VERSION, KIND, namespace, name)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return None
            return self._reconcile(body)

    def reconcile(self, body: Mapping[str, Any]) -> ReconcileResult | None:
        meta = body["metadata"]
        with self.locks.hold((meta["namespace"], meta["name"])):
            # The event's body may be older than what a child-triggered pass just saw;
            # reading it again keeps every pass level-based on the newest object.
            fresh = kube.get(self.api, API_VERSION, KIND, meta["namespace"], meta["name"])
            if fresh is None or fresh["metadata"].get("deletionTimestamp"):
                return None
            return self._reconcile(fresh)

    def _reconcile(self, body: Mapping[str, Any]) -> ReconcileResult:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        deployment = kube.get(self.api, "apps/v1", "Deployment", namespace, name)
        problem: Problem | None = None
        applied: list[str] = []
        gpu_text: str | None = None
        sizing: dict[str, Any] | None = None
        desired_replicas: int | None = None
        md_endpoint: str | None = None
        try:
            md = parse_model_deployment(body)
            md_endpoint = endpoint(md, self.config)
            current = (deployment or {}).get("spec", {}).get("replicas")
            annotations = meta.get("annotations")
            model_config = self._model_config(md.spec, annotations, (namespace, name))
            plan = make_plan(md, self.config, current, annotations, model_config)
            # gpu.type cpu has no GPU count.
            count = plan.gpu.count
            gpu_text = f"{count}x {md.spec.gpu.type}" if count else md.spec.gpu.type
            sizing = plan.gpu.estimate
            desired_replicas = plan.replicas
            for obj in self.inference_extension.applicable(plan.children.all(), body):
                observed = (
                    deployment
                    if obj["kind"] == "Deployment"
                    else kube.get(
                        self.api, obj["apiVersion"], obj["kind"], namespace, obj["metadata"]["name"]
                    )
                )
                if object_holds(obj, observed):
                    continue
                try:
                    result = kube.apply(self.api, obj)
                    self.own_writes.record(obj["kind"], result)
                except ApiException as e:
                    if self.inference_extension.gone(obj, e):
                        continue
                    if e.status in (400, 422):
                        raise SpecError(
                            "spec",
                            f"the API server refused the {obj['kind']}: {_api_message(e)}",
                            reason="ApplyRejected",
                        ) from None
                    raise
                applied.append(f"{obj['kind']}/{obj['metadata']['name']}")
                if obj["kind"] == "Deployment":
                    deployment = result
        except SpecError as e:
            problem = Problem(e.reason, f"{e.field}: {e.message}")

        pods = kube.list_objects(self.api, "v1", "Pod", namespace, label_selector(name))
        obs = Observation(
            generation=int(meta.get("generation") or 0),
            name=name,
            label_selector=label_selector(name),
            endpoint=md_endpoint,
            desired_replicas=desired_replicas,
            deployment=deployment,
            pods=pods,
            problem=problem,
            gpu=gpu_text,
            sizing=sizing,
        )
        update = build_status(obs, body.get("status"), self.clock())
        written = False
        if needs_write(update.status, body.get("status")):
            status_body = {
                "apiVersion": API_VERSION,
                "kind": KIND,
                "metadata": {"name": name, "namespace": namespace},
                "status": update.status,
            }
            try:
                self.own_writes.record(
                    KIND, kube.apply(self.api, status_body, subresource="status")
                )
                written = True
            except ApiException as e:
                if e.status != 404:  # deleted meanwhile: nothing left to report on
                    raise
        if applied:
            log.info("applied %s for %s/%s", ", ".join(applied), namespace, name)
            post_event(self.api, body, "Applied", f"applied {', '.join(applied)}")
        for t in update.transitions:
            if t.condition == DEGRADED and t.status == "True":
                post_event(self.api, body, t.reason, t.message, "Warning")
            elif t.condition == READY and t.status == "True":
                post_event(self.api, body, "Ready", t.message)
        return ReconcileResult(applied=applied, status_written=written, problem=problem)

    def _model_config(
        self, spec: Any, annotations: Mapping[str, Any] | None, key: ObjectKey
    ) -> ModelConfigState | None:
        """Where reading the model's config.json stands; never waits for it."""
        if self.model_configs is None:
            return None
        ref = model_ref_for(spec, annotations)
        return None if ref is None else self.model_configs.lookup(ref, key)


def _api_message(e: ApiException) -> str:
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except ValueError:
        return str(e.reason)
