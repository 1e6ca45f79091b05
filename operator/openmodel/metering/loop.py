"""The metering loop: every `cost.pollSeconds`, on the leader, count what every served
ModelDeployment's pods hold and what their engines served (ledger.py), into the
Prometheus series of metrics.py (docs/cost.md).

It reads the operator's watch-fed cache (no API request per poll), and scrapes the
ready engine pods of every ModelDeployment, autoscaled or not, for their token counters.

Restarts: the totals and each live pod's last counter values are saved in one ConfigMap
(`openmodel-metering`, the operator's namespace) at most every `cost.checkpointSeconds`
and only when something was counted since the last save: an idle cluster gets no
writes. A new leader (a restart, a failover) reads it and goes on: pods still running
are counted from the checkpoint's time and their counters from the saved values, so
they lose nothing; what pods that ended in between held or served after the checkpoint
is lost (at most `checkpointSeconds`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity

from openmodel.api import OWNER_LABEL, SpecError
from openmodel.config import PlatformConfig
from openmodel.engine_metrics.exposition import QueueReading
from openmodel.engine_metrics.scrape import Scraper, ScrapeTarget
from openmodel.engines import engine_for, parse_model_deployment
from openmodel.kube import calls as kube
from openmodel.kube.cache import ObjectCache
from openmodel.kube.leadership import Leadership, NotLeader
from openmodel.kube.pods import classify_pods
from openmodel.metering.ledger import Holding, Ledger, ModelKey, PodSample, hourly_cost
from openmodel.metering.metrics import MeteringMetrics
from openmodel.namespaces import matches, patterns_from_env

log = logging.getLogger("openmodel.metering")

CHECKPOINT_NAME: Final = "openmodel-metering"
CHECKPOINT_KEY: Final = "ledger.json"
_GIB: Final = 2**30


def operator_namespace() -> str:
    return os.environ.get("OPENMODEL_POD_NAMESPACE", "openmodel-system")


def _started(pod: Mapping[str, Any], now: float) -> float:
    text = (pod.get("status") or {}).get("startTime")
    if not isinstance(text, str):
        return now
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return now


def _holds_resources(pod: Mapping[str, Any]) -> bool:
    """Bound to a node and not finished: the node's GPUs are the pod's, whether it is
    pulling, loading, serving, idle or draining."""
    phase = (pod.get("status") or {}).get("phase")
    return bool((pod.get("spec") or {}).get("nodeName")) and phase not in ("Succeeded", "Failed")


def _quantity(text: object) -> float:
    # The client's parser understands every suffix the API server accepts (m, Ki, e3...).
    return float(parse_quantity(text))  # type: ignore[no-untyped-call]


def _resources(pod: Mapping[str, Any], gpu_resource: str) -> tuple[int, float, float]:
    """(GPUs in the limits, requested CPU cores, requested memory GiB) of the containers."""
    gpus, cores, memory = 0, 0.0, 0.0
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
        if gpu_resource and gpu_resource in limits:
            gpus += int(_quantity(limits[gpu_resource]))
        if "cpu" in requests:
            cores += _quantity(requests["cpu"])
        if "memory" in requests:
            memory += _quantity(requests["memory"]) / _GIB
    return gpus, cores, memory


def pod_sample(pod: Mapping[str, Any], gpu_resource: str, reading: object, now: float) -> PodSample:
    gpus, cores, memory = _resources(pod, gpu_resource)
    sample = PodSample(
        uid=str(pod["metadata"].get("uid") or pod["metadata"]["name"]),
        gpus=gpus,
        started=_started(pod, now),
        cpu_cores=cores,
        memory_gib=memory,
    )
    if not isinstance(reading, QueueReading):
        return sample
    return PodSample(
        uid=sample.uid,
        gpus=gpus,
        started=sample.started,
        cpu_cores=cores,
        memory_gib=memory,
        busy=None if reading.running is None else reading.running > 0,
        prompt_tokens=reading.prompt_tokens,
        generation_tokens=reading.generation_tokens,
    )


@dataclass
class MeteringLoop:
    api: client.ApiClient
    config: PlatformConfig
    leadership: Leadership = field(default_factory=Leadership)
    cache: ObjectCache | None = None
    metrics: MeteringMetrics = field(default_factory=MeteringMetrics)
    checkpoint_namespace: str = field(default_factory=operator_namespace)
    # Wall-clock seconds: pods' start times are wall-clock, and so is the checkpoint's.
    wall: Callable[[], float] = time.time
    namespaces: list[str] = field(default_factory=patterns_from_env)
    ledger: Ledger = field(default_factory=Ledger)
    _counting: bool = field(default=False, init=False)
    _saved_at: float | None = field(default=None, init=False)
    _unsaved: bool = field(default=False, init=False)
    _warned_no_namespace: bool = field(default=False, init=False)

    async def run_forever(self) -> None:
        cost = self.config.cost
        self.metrics.show_prices(cost)
        async with Scraper(
            timeout_s=self.config.autoscaler.scrape_timeout_seconds,
            deadline_s=max(0.5, cost.poll_seconds * 0.8),
        ) as scraper:
            while True:
                started = time.monotonic()
                try:
                    if self.leadership.is_leader():
                        await self.cycle(scraper)
                    elif self._counting:
                        self.stand_down()
                except NotLeader:
                    log.info("metering: no longer the leader; the checkpoint was not saved")
                except ApiException as e:
                    log.warning("metering cycle failed: %s %s", e.status, e.reason)
                except Exception:
                    log.exception("metering cycle failed; retrying next poll")
                await asyncio.sleep(max(0.0, cost.poll_seconds - (time.monotonic() - started)))

    def forget(self, key: ModelKey) -> None:
        """The ModelDeployment was deleted: its series go now, as every other per-object
        series does (the ledger's entry goes at the next poll, which no longer sees it)."""
        accelerator = self.ledger.accelerators.get(key, "")
        self.metrics.forget(key, accelerator, self.config.cost.currency)

    def stand_down(self) -> None:
        """Another replica counts now: show none of the series, keep nothing."""
        currency = self.config.cost.currency
        for key, accelerator in list(self.ledger.accelerators.items()):
            self.metrics.forget(key, accelerator, currency)
        self.ledger = Ledger()
        self._counting = False
        self._saved_at = None

    async def cycle(self, scraper: Scraper) -> None:
        if not self._counting:
            await asyncio.to_thread(self._restore)
            self._counting = True
        holdings = await self._holdings(scraper)
        now = self.wall()
        cost = self.config.cost
        added = self.ledger.observe(now, holdings, cost)
        for key, delta in added.items():
            holding = holdings[key]
            self.metrics.add(key, holding.accelerator, delta, cost.currency)
            self.metrics.set_rate(key, hourly_cost(holding, cost), cost.currency)
            self._unsaved = self._unsaved or not delta.is_zero()
        gone = [key for key in self.ledger.totals if key not in holdings]
        for key in gone:
            self.metrics.forget(key, self.ledger.accelerators.get(key, ""), cost.currency)
            self._unsaved = True
        self.ledger.forget(gone)
        self.metrics.polls.inc()
        if self._unsaved and (
            self._saved_at is None or now - self._saved_at >= cost.checkpoint_seconds
        ):
            await asyncio.to_thread(self._save, now)

    async def _holdings(self, scraper: Scraper) -> dict[ModelKey, Holding]:
        if self.cache is not None:
            mds: Sequence[Mapping[str, Any]] = self.cache.model_deployments()
            pods: Sequence[Mapping[str, Any]] = self.cache.all_of("Pod")
        else:
            mds, pods = await asyncio.gather(
                asyncio.to_thread(kube.list_all_model_deployments, self.api),
                asyncio.to_thread(kube.list_cluster_wide, self.api, "pods", OWNER_LABEL),
            )
        by_owner: dict[ModelKey, list[Mapping[str, Any]]] = defaultdict(list)
        for pod in pods:
            meta = pod["metadata"]
            by_owner[(meta["namespace"], meta["labels"][OWNER_LABEL])].append(pod)
        keys: list[ModelKey] = []
        work = []
        for body in mds:
            key = (body["metadata"]["namespace"], body["metadata"]["name"])
            if not matches(key[0], self.namespaces):
                continue
            try:
                md = parse_model_deployment(body)
            except SpecError:
                continue  # the reconciler reports it; it runs nothing of ours to count
            keys.append(key)
            work.append(self._holding(scraper, md.spec.engine, md.spec.gpu.type, by_owner[key]))
        return dict(zip(keys, await asyncio.gather(*work), strict=True))

    async def _holding(
        self,
        scraper: Scraper,
        engine_name: str,
        accelerator: str,
        pods: Sequence[Mapping[str, Any]],
    ) -> Holding:
        held = [p for p in pods if _holds_resources(p)]
        engine = engine_for(engine_name)
        ready = classify_pods(held).ready
        targets = [
            ScrapeTarget(pod=name, host=ip, port=engine.port, path=engine.metrics_path)
            for name, ip in sorted(ready.items())
        ]
        readings = await scraper.scrape(targets, engine.metric_names) if targets else {}
        entry = self.config.accelerators.get(accelerator)
        gpu_resource = entry.resource_name if entry is not None else ""
        now = self.wall()
        return Holding(
            accelerator,
            tuple(
                pod_sample(p, gpu_resource, readings.get(p["metadata"]["name"]), now) for p in held
            ),
        )

    def _restore(self) -> None:
        core = client.CoreV1Api(self.api)
        try:
            found = core.read_namespaced_config_map(CHECKPOINT_NAME, self.checkpoint_namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            log.info("metering: no checkpoint yet; counting pods from their start")
            return
        try:
            ledger = Ledger.restored(json.loads((found.data or {})[CHECKPOINT_KEY]))
        except (KeyError, ValueError, TypeError) as e:
            # Not ours, or damaged: counting from the pods' start is the better guess.
            log.warning(
                "metering: checkpoint %s unreadable (%s); starting afresh", CHECKPOINT_NAME, e
            )
            return
        self.ledger = ledger
        self._saved_at = ledger.last_poll
        currency = self.config.cost.currency
        for key, totals in ledger.totals.items():
            self.metrics.add(key, ledger.accelerators.get(key, ""), totals, currency)
        log.info(
            "metering: went on from the checkpoint of %s (%d ModelDeployments)",
            "never" if ledger.last_poll is None else _when(ledger.last_poll),
            len(ledger.totals),
        )

    def _save(self, now: float) -> None:
        self.leadership.check()
        namespace = self.checkpoint_namespace
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": CHECKPOINT_NAME,
                "namespace": namespace,
                "labels": {
                    "app.kubernetes.io/name": "openmodel",
                    "app.kubernetes.io/component": "metering",
                },
            },
            "data": {CHECKPOINT_KEY: json.dumps(self.ledger.checkpoint(), separators=(",", ":"))},
        }
        # Server-side apply (create or update in one PATCH), as every other write: a PUT
        # is one urllib3 retries after a timeout, unguarded, so a write cut off at the
        # Lease's expiry could still reach the API server later (test_leader_stall.py).
        try:
            kube.call(
                self.api,
                "PATCH",
                f"/api/v1/namespaces/{namespace}/configmaps/{CHECKPOINT_NAME}",
                body=body,
                content_type="application/apply-patch+yaml",
                query=[("fieldManager", kube.FIELD_MANAGER), ("force", "true")],
            )
        except ApiException as missing:
            if missing.status != 404:
                raise
            # No such namespace (OPENMODEL_POD_NAMESPACE): counting goes on; a restart
            # would start from the pods' start times. Said once, tried again later.
            if not self._warned_no_namespace:
                log.warning(
                    "metering: cannot save the checkpoint: namespace %s not found; "
                    "set OPENMODEL_POD_NAMESPACE to the operator's namespace",
                    namespace,
                )
                self._warned_no_namespace = True
            self._saved_at = now
            return
        self._saved_at = now
        self._unsaved = False


def _when(at: float) -> str:
    return datetime.fromtimestamp(at).isoformat(timespec="seconds") if math.isfinite(at) else "?"
