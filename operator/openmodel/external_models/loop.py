"""The ExternalModel loop: every ExternalModel's verdict written to its status, and the
gateway's egress NetworkPolicy kept to what the ExternalModels declare.

A cycle runs when an ExternalModel changes (`kick`, from the watch the operator feeds
its cache with), when a ModelDeployment does (a served name may clash), and every
`recheck_seconds` besides: a RoleBinding granting the gateway a key is no event here,
and the SubjectAccessReview is asked again each cycle. It reads ExternalModels and
ModelDeployments from the operator's cache; its requests are one SubjectAccessReview
per ExternalModel with a key, one GET of the policy, and the writes that differ.
Leader only: each write asks the leadership (the guarded API client).

Status goes to the status subresource by server-side apply under its own field manager;
Events say each change of verdict (never the key: only the Secret's name appears).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.api import API_VERSION, SecretKeyRef, SpecError
from openmodel.clock import utc_now
from openmodel.config import PlatformConfig
from openmodel.external_model import KIND, ExternalModel
from openmodel.external_models.verdict import (
    READY,
    Verdict,
    desired_status,
    invalid,
    judge,
    name_claims,
    parse,
    status_changed,
    transition,
)
from openmodel.kube import calls as kube
from openmodel.kube.cache import ObjectCache
from openmodel.kube.events import post_event
from openmodel.kube.leadership import Leadership, NotLeader
from openmodel.privacy.gateway_egress import (
    GATEWAY_EGRESS_LABEL,
    GATEWAY_EGRESS_POLICY,
    render_gateway_egress,
)

log = logging.getLogger(__name__)

FIELD_MANAGER = "openmodel-external-models"
POLICY_API_VERSION, POLICY_KIND = "networking.k8s.io/v1", "NetworkPolicy"
DEFAULT_RECHECK_SECONDS = 60.0

ObjectKey = tuple[str, str]


@dataclass
class ExternalModelLoop:
    api: client.ApiClient
    config: PlatformConfig
    cache: ObjectCache
    leadership: Leadership = field(default_factory=Leadership)
    recheck_seconds: float = DEFAULT_RECHECK_SECONDS
    # The resourceVersion of each status this loop wrote: its echo wakes no cycle.
    _written: dict[ObjectKey, str] = field(default_factory=dict)
    _wake: asyncio.Event | None = None
    # Set by the first kick: kopf runs no handler (the kicks' source) before every
    # watched kind's first listing is in the cache. Before that an empty cache would
    # read as "no ExternalModel" and withdraw the gateway's egress policy.
    _primed: bool = False

    # -- called on kopf's event loop --------------------------------------------------

    def kick(self) -> None:
        """Something a verdict depends on changed: run a cycle soon (kicks coalesce)."""
        self._primed = True
        if self._wake is not None:
            self._wake.set()

    def is_echo(self, body: Mapping[str, Any]) -> bool:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        version = meta.get("resourceVersion")
        return version is not None and self._written.get(key) == str(version)

    def forget(self, key: ObjectKey) -> None:
        self._written.pop(key, None)

    async def run_forever(self) -> None:
        self._wake = asyncio.Event()
        if self._primed:
            self._wake.set()
        while True:
            with contextlib.suppress(TimeoutError):  # the recheck's turn
                await asyncio.wait_for(self._wake.wait(), timeout=self.recheck_seconds)
            self._wake.clear()
            try:
                if self._primed and self.leadership.is_leader():
                    await asyncio.to_thread(self.cycle)
            except NotLeader:
                log.info("external models: no longer the leader; the cycle stopped")
            except ApiException as e:
                log.warning("external model cycle failed: %s %s", e.status, e.reason)
            except Exception:
                log.exception("external model cycle failed; retrying next cycle")

    # -- one cycle (in a thread) ------------------------------------------------------

    def cycle(self) -> None:
        bodies = [
            b
            for b in self.cache.all_of(KIND)
            if not (b.get("metadata") or {}).get("deletionTimestamp")
        ]
        parsed: list[tuple[Mapping[str, Any], ExternalModel | SpecError]] = [
            (b, parse(b)) for b in bodies
        ]
        valid = [(b, m) for b, m in parsed if isinstance(m, ExternalModel)]
        claims = name_claims(self.cache.model_deployments(), valid)
        for body, model in parsed:
            if isinstance(model, SpecError):
                verdict = invalid(model)
            else:
                verdict = judge(model, claims, self._gateway_may_read, self._gateway_account)
            self._report(body, verdict)
        self._keep_egress_policy([m for _, m in valid])

    @property
    def _gateway_account(self) -> tuple[str, str]:
        gateway = self.config.gateway
        return gateway.demand_namespace, gateway.service_account_name

    def _gateway_may_read(self, model: ExternalModel, secret: SecretKeyRef) -> bool:
        return kube.service_account_may(
            self.api, self._gateway_account, "get", "secrets", model.namespace, secret.name
        )

    def _report(self, body: Mapping[str, Any], verdict: Verdict) -> None:
        meta = body["metadata"]
        observed = body.get("status")
        status = desired_status(verdict, int(meta.get("generation") or 0), observed, utc_now())
        if not status_changed(status, observed):
            return
        try:
            written = kube.apply(
                self.api,
                {
                    "apiVersion": API_VERSION,
                    "kind": KIND,
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                    "status": status,
                },
                field_manager=FIELD_MANAGER,
                subresource="status",
            )
        except ApiException as e:
            if e.status == 404:
                return  # deleted meanwhile
            raise
        self.cache.wrote(KIND, written)
        version = (written.get("metadata") or {}).get("resourceVersion")
        if version is not None:
            self._written[(meta["namespace"], meta["name"])] = str(version)
        if transition(verdict, observed):
            log.info("%s %s/%s: %s %s", KIND, meta["namespace"], meta["name"], READY,
                     verdict.reason)  # fmt: skip
            post_event(
                self.api,
                {**body, "apiVersion": API_VERSION, "kind": KIND},
                verdict.reason,
                verdict.message,
                "Normal" if verdict.ready else "Warning",
            )

    def _keep_egress_policy(self, models: list[ExternalModel]) -> None:
        """Apply the gateway's egress policy as the ExternalModels declare it, or delete
        ours when none declares egress (never a policy of that name someone else made)."""
        desired = render_gateway_egress(models, self.config)
        namespace = self.config.gateway.demand_namespace
        current = kube.get(self.api, POLICY_API_VERSION, POLICY_KIND, namespace,
                           GATEWAY_EGRESS_POLICY)  # fmt: skip
        ours = current is not None and GATEWAY_EGRESS_LABEL in (
            (current.get("metadata") or {}).get("labels") or {}
        )
        if desired is None:
            if ours:
                kube.delete(self.api, POLICY_API_VERSION, POLICY_KIND, namespace,
                            GATEWAY_EGRESS_POLICY)  # fmt: skip
                log.info("NetworkPolicy %s/%s deleted: no ExternalModel declares egress",
                         namespace, GATEWAY_EGRESS_POLICY)  # fmt: skip
            return
        if current is not None and not ours:
            log.warning(
                "NetworkPolicy %s/%s exists and is not the operator's (no %s label): left "
                "as it is; the gateway gets no egress to the ExternalModels' upstreams",
                namespace, GATEWAY_EGRESS_POLICY, GATEWAY_EGRESS_LABEL,
            )  # fmt: skip
            return
        if current is not None and _holds(desired, current):
            return
        try:
            kube.apply(self.api, desired, field_manager=FIELD_MANAGER)
        except ApiException as e:
            if kube.namespace_not_found(e):
                log.warning("the gateway's namespace %s does not exist: no egress policy "
                            "for the ExternalModels", namespace)  # fmt: skip
                return
            raise
        log.info("NetworkPolicy %s/%s applied", namespace, GATEWAY_EGRESS_POLICY)


def _holds(desired: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    labels = (current.get("metadata") or {}).get("labels") or {}
    wanted = desired["metadata"]["labels"]
    return current.get("spec") == desired["spec"] and all(
        labels.get(k) == v for k, v in wanted.items()
    )
