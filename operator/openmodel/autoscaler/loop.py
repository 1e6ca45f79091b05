"""The autoscaler loop: every poll, scrape each autoscaled ModelDeployment's ready pods,
decide, and write the Deployment's replicas and the ModelDeployment's autoscaler status.

It writes the Deployment's `spec.replicas` (a LeaderWorkerSet's through its scale
subresource) only, under its own field manager, and never the ModelDeployment's spec.
It reads the operator's cache; without one, four cluster-wide list calls per cycle
(ModelDeployments, Deployments, LeaderWorkerSets, Pods), whatever the number of
ModelDeployments. With leader election on, only the Lease holder runs cycles, and each
write asks again (`kube/leadership.py`): a cycle that outlives the hold stops, quietly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel import telemetry
from openmodel.api import (
    KIND,
    LWS_API_VERSION,
    LWS_KIND,
    OWNER_LABEL,
    SERVING_POD_SELECTOR,
    SpecError,
)
from openmodel.autoscaler import (
    Decision,
    DecisionReason,
    Observation,
    ScalingHistory,
    ScalingPolicy,
    decide,
)
from openmodel.autoscaler.demand import DemandReport, gateway_demand_urls, read_demand
from openmodel.autoscaler.zero import Demand, from_zero, to_zero
from openmodel.clock import utc_now
from openmodel.config import PlatformConfig
from openmodel.engine_metrics.scrape import Scraper, ScrapeTarget
from openmodel.engines import engine_for, parse_model_deployment
from openmodel.kube import calls as kube
from openmodel.kube.cache import ObjectCache
from openmodel.kube.events import post_event
from openmodel.kube.leadership import Leadership, NotLeader
from openmodel.kube.pods import classify_pods, serving
from openmodel.kube.status_writer import apply_loop_status, loop_status_changed
from openmodel.namespaces import matches, patterns_from_env
from openmodel.problems import GROUP_NAME_TAKEN, degraded_by

log = logging.getLogger(__name__)

SCALING_ACTIVE = "ScalingActive"
ObjectKey = tuple[str, str]


def autoscaler_status(
    decision: Decision, previous: Any, scaled_at: str | None, g: int
) -> dict[str, Any]:
    holding = decision.reason in (DecisionReason.METRICS_UNAVAILABLE, DecisionReason.NO_READY_PODS)
    summary: dict[str, Any] = {
        "desiredReplicas": decision.desired_replicas,
        "reason": str(decision.reason),
        "message": decision.message,
    }
    if decision.queue_depth is not None:
        summary["queueDepth"] = decision.queue_depth
    # The stored summary is not trusted to have a shape (a status edited by hand).
    kept = previous.get("lastScaleTime") if isinstance(previous, Mapping) else None
    last = scaled_at or (kept if isinstance(kept, str) else None)
    if last:
        summary["lastScaleTime"] = last
    return {
        "autoscaler": summary,
        "conditions": [
            {
                "type": SCALING_ACTIVE,
                "status": "False" if holding else "True",
                "reason": str(decision.reason),
                "message": decision.message[:32000],
                "observedGeneration": g,
            }
        ],
    }


@dataclass
class AutoscalerLoop:
    api: client.ApiClient
    config: PlatformConfig
    # Asked before each cycle; the writes themselves go through the guarded API client.
    leadership: Leadership = field(default_factory=Leadership)
    clock: Callable[[], float] = time.monotonic
    histories: dict[ObjectKey, ScalingHistory] = field(default_factory=dict)
    capacities: dict[ObjectKey, float] = field(default_factory=dict)
    # Scale to zero: when each ModelDeployment was last seen busy (clock() time).
    last_active: dict[ObjectKey, float] = field(default_factory=dict)
    # Namespace patterns served (empty: all), as for kopf's watches.
    namespaces: list[str] = field(default_factory=patterns_from_env)
    # The operator's watch-fed cache; None (tests, scripts): list from the API each cycle.
    cache: ObjectCache | None = None
    _demand_session: aiohttp.ClientSession = field(init=False, repr=False)
    # Whether the last look found gateway pods to read demand from: logged on a change,
    # not every poll.
    _gateway_pods_found: bool | None = field(default=None, init=False, repr=False)

    async def run_forever(self) -> None:
        poll = self.config.autoscaler.poll_seconds
        async with (
            Scraper(
                timeout_s=self.config.autoscaler.scrape_timeout_seconds,
                deadline_s=max(0.5, poll * 0.8),
            ) as scraper,
            aiohttp.ClientSession(trust_env=False) as self._demand_session,
        ):
            while True:
                started = self.clock()
                try:
                    if self.leadership.is_leader():
                        await self.cycle(scraper)
                except NotLeader:
                    log.info("autoscaler: no longer the leader; the cycle stopped before writing")
                except ApiException as e:
                    log.warning("autoscaler cycle failed: %s %s", e.status, e.reason)
                except Exception:
                    # Unreachable API server, a bug in one ModelDeployment's pass...: the
                    # loop must outlive it, loudly. The next cycle starts from scratch.
                    log.exception("autoscaler cycle failed; retrying next poll")
                await asyncio.sleep(max(0.0, poll - (self.clock() - started)))

    def start_afresh(self) -> None:
        """Elected: another replica decided until now; start from what is, not from old
        memory of scaling and activity."""
        self.histories.clear()
        self.last_active.clear()

    async def _model_deployments(self) -> Sequence[Mapping[str, Any]]:
        if self.cache is not None:
            return self.cache.model_deployments()
        return await asyncio.to_thread(kube.list_all_model_deployments, self.api)

    async def _owned(self) -> tuple[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]]]:
        """Every owned engine workload (Deployments, and the LeaderWorkerSets the
        reconciler wrote) and serving Pod (no group's workers): from the cache, or three
        cluster-wide lists."""
        if self.cache is not None:
            workloads = [*self.cache.all_of("Deployment"), *self.cache.all_of(LWS_KIND)]
            return workloads, serving(self.cache.all_of("Pod"))
        deployments, groups, pods = await asyncio.gather(
            asyncio.to_thread(kube.list_cluster_wide, self.api, "deployments", OWNER_LABEL),
            asyncio.to_thread(self._list_groups),
            asyncio.to_thread(kube.list_cluster_wide, self.api, "pods", SERVING_POD_SELECTOR),
        )
        return [*deployments, *groups], pods

    def _list_groups(self) -> list[dict[str, Any]]:
        """The owned LeaderWorkerSets, none when their CRD is not served. Each carries
        its kind, which tells the scale write where to go."""
        try:
            groups = kube.list_cluster_wide(self.api, "leaderworkersets", OWNER_LABEL)
        except ApiException as e:
            if e.status == 404:
                return []
            raise
        return [{**g, "kind": LWS_KIND} for g in groups]

    async def cycle(self, scraper: Scraper) -> None:
        mds = await self._model_deployments()
        if not any(
            (b.get("spec") or {}).get("autoscaling") is not None
            and matches(b["metadata"]["namespace"], self.namespaces)
            for b in mds
        ):
            # Nothing autoscales: nothing else to look at.
            deployments: Sequence[Mapping[str, Any]] = []
            pods: Sequence[Mapping[str, Any]] = []
        else:
            deployments, pods = await self._owned()
        by_owner: dict[ObjectKey, Mapping[str, Any]] = {}
        # During a switch between the two kinds both exist: the newer one is scaled.
        for d in sorted(deployments, key=lambda w: str(w["metadata"].get("creationTimestamp"))):
            meta = d["metadata"]
            by_owner[(meta["namespace"], meta["labels"][OWNER_LABEL])] = d
        pods_by_owner: dict[ObjectKey, list[Mapping[str, Any]]] = defaultdict(list)
        for p in pods:
            meta = p["metadata"]
            pods_by_owner[(meta["namespace"], meta["labels"][OWNER_LABEL])].append(p)
        demand = await self._demand(mds)
        seen: set[ObjectKey] = set()
        keys: list[ObjectKey] = []
        work = []
        for body in mds:
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            if not matches(key[0], self.namespaces):
                continue
            deployment = by_owner.get(key)
            if deployment is None or body["metadata"].get("deletionTimestamp"):
                continue
            if deployment.get("kind") == "LeaderWorkerSet" and degraded_by(body, GROUP_NAME_TAKEN):
                # A new group would take another ModelDeployment's names: hold it as it is.
                continue
            try:
                md = parse_model_deployment(body)
            except SpecError:
                continue  # the reconciler reports it; nothing to scale on
            if md.spec.autoscaling is None:
                continue
            seen.add(key)
            keys.append(key)
            auto = md.spec.autoscaling
            # decide() never goes below 1; zero is zero.py's business (allow_zero).
            policy = ScalingPolicy.from_spec(
                dataclasses.replace(auto, min_replicas=max(1, auto.min_replicas)),
                tolerance=self.config.autoscaler.tolerance,
            )
            zero_after = float(auto.scale_to_zero_after_seconds) if auto.min_replicas == 0 else None
            work.append(
                self.scale_one(
                    scraper,
                    body,
                    md.spec.engine,
                    policy,
                    deployment,
                    pods_by_owner.get(key, []),
                    zero_after=zero_after,
                    demand=demand.for_model(key),
                )
            )
        # One ModelDeployment's failure (an API error on its write...) must neither stop
        # the others nor skip the forgetting of deleted ones below.
        outcomes = await asyncio.gather(*work, return_exceptions=True)
        not_leader: NotLeader | None = None
        for key, outcome in zip(keys, outcomes, strict=True):
            if isinstance(outcome, NotLeader):
                not_leader = outcome
            elif isinstance(outcome, BaseException):
                if isinstance(outcome, asyncio.CancelledError):
                    raise outcome
                log.warning(
                    "autoscaler: %s/%s failed this cycle: %s", *key, outcome, exc_info=outcome
                )
        for gone in set(self.histories) - seen:
            self.histories.pop(gone, None)
            self.capacities.pop(gone, None)
            self.last_active.pop(gone, None)
            telemetry.forget(*gone)
        if not_leader is not None:
            raise not_leader

    async def _demand(self, mds: Sequence[Mapping[str, Any]]) -> DemandReport:
        """What the gateways hold, asked only when some ModelDeployment may sit at zero."""
        if not any(
            ((b.get("spec") or {}).get("autoscaling") or {}).get("minReplicas") == 0 for b in mds
        ):
            return DemandReport(by_model={}, complete=True)
        urls = list(self.config.gateway.demand_urls)
        urls += await asyncio.to_thread(self._gateway_pod_urls)
        report = await read_demand(
            self._demand_session, urls, self.config.autoscaler.scrape_timeout_seconds
        )
        if report.failures:
            log.warning("autoscaler: gateway demand incomplete: %s", "; ".join(report.failures))
        return report

    def _gateway_pod_urls(self) -> list[str]:
        gw = self.config.gateway
        try:
            pods = kube.list_objects(
                self.api, "v1", "Pod", gw.demand_namespace, label_selector=gw.demand_selector
            )
        except ApiException as e:
            if e.status not in (403, 404):
                raise
            pods = []  # no gateway installed here (or not ours to see)
        urls = gateway_demand_urls(pods)
        self._note_gateway_pods(bool(urls))
        return urls

    def _note_gateway_pods(self, found: bool) -> None:
        """Say when gateway pods appear or go: without them a model at zero never wakes
        (held requests are invisible), which a namespace mismatch would cause silently."""
        if found == self._gateway_pods_found:
            return
        self._gateway_pods_found = found
        gw = self.config.gateway
        if found:
            log.info(
                "autoscaler: reading demand from gateway pods in namespace %s (%s)",
                gw.demand_namespace, gw.demand_selector,
            )  # fmt: skip
        else:
            log.warning(
                "autoscaler: no running gateway pod in namespace %s matching %s: requests held "
                "by a gateway cannot wake a model from zero (is gateway.demandNamespace the "
                "gateway's namespace?)",
                gw.demand_namespace, gw.demand_selector,
            )  # fmt: skip

    async def scale_one(
        self,
        scraper: Scraper,
        body: Mapping[str, Any],
        engine_name: str,
        policy: ScalingPolicy,
        deployment: Mapping[str, Any],
        pods: Sequence[Mapping[str, Any]],
        zero_after: float | None = None,
        demand: Demand | None = None,
    ) -> None:
        """zero_after: scaleToZeroAfterSeconds when minReplicas is 0, else None."""
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        demand = demand or Demand()
        current = int((deployment.get("spec") or {}).get("replicas", 1))
        if zero_after is not None and current == 0:
            now = self.clock()
            history = self.histories.get(key) or ScalingHistory.assume(0, at=now)
            woken = from_zero(current, demand, history, now, policy.horizon_s)
            assert woken is not None
            self.last_active[key] = now
            await self._act(body, key, current, woken, deployment.get("kind", "Deployment"))
            return
        engine = engine_for(engine_name)
        sets = classify_pods(pods)
        targets = [
            ScrapeTarget(pod=name, host=ip, port=engine.port, path=engine.metrics_path)
            for name, ip in sorted(sets.ready.items())
        ]
        results = await scraper.scrape(targets, engine.metric_names) if targets else {}
        now = self.clock()
        history = self.histories.get(key) or ScalingHistory.assume(current, at=now)
        observation = Observation.from_results(results, starting=sets.starting)
        # What one pod serves at once, learned whenever pods are saturated; kept so that
        # steady load, once its queue drains, is not mistaken for no load.
        capacity = observation.saturated_capacity() or self.capacities.get(key)
        if capacity is not None:
            self.capacities[key] = capacity
        decision = decide(
            observation=observation,
            current_replicas=current,
            policy=policy,
            history=history,
            now=now,
            pod_capacity=capacity,
        )
        if zero_after is not None:
            decision = to_zero(
                decision,
                current,
                observation,
                demand,
                idle_for_s=now - self._last_active(key, observation, demand, now),
                after_s=zero_after,
            )
        await self._act(body, key, current, decision, deployment.get("kind", "Deployment"))

    def _last_active(
        self, key: ObjectKey, observation: Observation, demand: Demand, now: float
    ) -> float:
        """When the model was last busy: now if engines or gateways show work, else the
        latest of what was remembered and the gateways' own last request."""
        busy = (
            demand.active
            or any(v > 0 for v in observation.waiting.values())
            or any(v > 0 for v in observation.running.values())
        )
        # First sight (a new ModelDeployment, or after a restart): count it as busy now,
        # so a restart never shortens the idle period. A remembered time after now (an
        # injected clock that went back; time.monotonic cannot) restarts the period.
        last = now if busy else min(self.last_active.get(key, now), now)
        if demand.idle_seconds is not None:
            last = max(last, now - demand.idle_seconds)
        self.last_active[key] = last
        return last

    async def _act(
        self,
        body: Mapping[str, Any],
        key: ObjectKey,
        current: int,
        decision: Decision,
        workload_kind: str = "Deployment",
    ) -> None:
        meta = body["metadata"]
        self.histories[key] = decision.history
        telemetry.observe_queue(*key, decision.queue_depth, decision.desired_replicas)
        scaled_at: str | None = None
        if decision.desired_replicas != current:
            direction = "up" if decision.desired_replicas > current else "down"
            write = self._scale_group if workload_kind == LWS_KIND else self._write_replicas
            await asyncio.to_thread(write, key, decision.desired_replicas)
            scaled_at = utc_now()
            telemetry.record_scaling(*key, direction)
            message = f"{current} -> {decision.desired_replicas} replicas: {decision.message}"
            log.info("autoscaler %s/%s: %s", *key, message)
            await asyncio.to_thread(post_event, self.api, body, str(decision.reason), message)
        else:
            telemetry.record_scaling(*key, "hold")
        status = autoscaler_status(
            decision,
            (body.get("status") or {}).get("autoscaler"),
            scaled_at,
            int(meta.get("generation") or 0),
        )
        if loop_status_changed(status, body.get("status")):
            await asyncio.to_thread(self._write_status, key, status, body.get("status"))

    def _write_replicas(self, key: ObjectKey, replicas: int) -> None:
        result = kube.apply(
            self.api,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": key[1], "namespace": key[0]},
                "spec": {"replicas": replicas},
            },
            field_manager=kube.AUTOSCALER_FIELD_MANAGER,
        )
        if self.cache is not None:
            self.cache.wrote("Deployment", result)

    def _scale_group(self, key: ObjectKey, replicas: int) -> None:
        """A LeaderWorkerSet's groups, through its scale subresource. The kind is not
        watched: the cached copy takes the new count and version, or the reconciler
        would apply the old count back."""
        scaled = kube.scale(
            self.api, LWS_API_VERSION, LWS_KIND, key[0], key[1], replicas,
            kube.AUTOSCALER_FIELD_MANAGER,
        )  # fmt: skip
        if self.cache is None:
            return
        held = self.cache.get(LWS_KIND, *key)
        if held is not None:
            version = (scaled.get("metadata") or {}).get("resourceVersion")
            self.cache.wrote(
                LWS_KIND,
                {
                    **held,
                    "metadata": {**held["metadata"], "resourceVersion": version},
                    "spec": {**held["spec"], "replicas": replicas},
                },
            )

    def _write_status(
        self, key: ObjectKey, status: dict[str, Any], observed: Mapping[str, Any] | None
    ) -> None:
        result = apply_loop_status(self.api, key, status, observed, kube.AUTOSCALER_FIELD_MANAGER)
        if self.cache is not None and result is not None:
            self.cache.wrote(KIND, result)
