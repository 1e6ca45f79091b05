"""The adapter loop: every poll, make each ready pod of an engine that loads adapters at
runtime serve exactly the declared adapters, then report what the engines themselves list.

It loads and unloads through the engine's runtime API (`AdapterSupport.runtime_api`), so
an adapter change never touches the pod template and never restarts a pod; a pod that
starts later (scale-up, crash, rollout) is given the whole set on the next poll. For an
engine that loads adapters at start only, it reports what each pod was started with.
Two cluster-wide lists per poll (ModelDeployments, and pods only when some
ModelDeployment declares adapters); one writer: with leader election on, only the Lease
holder acts, and it asks again before each request to an engine and each write
(`kube/leadership.py`). Status goes to the status subresource under its own field manager, so it
never overwrites the reconciler's or the autoscaler's fields.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from openmodel.adapters.engine_api import load_adapter, loaded_adapters, unload_adapter
from openmodel.adapters.plan import FailureLog, pod_actions
from openmodel.adapters.status import PodReport, adapters_status
from openmodel.api import KIND, OWNER_LABEL, SERVING_POD_SELECTOR, SpecError
from openmodel.config import PlatformConfig
from openmodel.engines import engine_for, parse_model_deployment
from openmodel.engines.base import AdapterApi, adapter_path
from openmodel.kube import calls as kube
from openmodel.kube.cache import ObjectCache
from openmodel.kube.events import post_event
from openmodel.kube.leadership import Leadership, NotLeader
from openmodel.kube.pods import classify_pods, serving
from openmodel.kube.status_writer import apply_loop_status, loop_status_changed
from openmodel.namespaces import matches, patterns_from_env

log = logging.getLogger(__name__)

ObjectKey = tuple[str, str]
REQUEST_TIMEOUT_SECONDS = 30.0  # a load reads the adapter from disk


@dataclass
class AdapterLoop:
    api: client.ApiClient
    config: PlatformConfig
    # Asked before each cycle and each load or unload; the API writes go through the
    # guarded API client.
    leadership: Leadership = field(default_factory=Leadership)
    clock: Callable[[], float] = time.monotonic
    failures: FailureLog = field(default_factory=FailureLog)
    namespaces: list[str] = field(default_factory=patterns_from_env)
    # The last error posted as an Event, per adapter: an Event per new error, not per poll.
    announced: dict[tuple[str, str, str], str] = field(default_factory=dict)
    # The operator's watch-fed cache; None (tests, scripts): list from the API each cycle.
    cache: ObjectCache | None = None

    async def run_forever(self) -> None:
        poll = self.config.adapters.poll_seconds
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                started = self.clock()
                try:
                    if self.leadership.is_leader():
                        await self.cycle(session)
                except NotLeader:
                    log.info("adapters: no longer the leader; the cycle stopped before writing")
                except ApiException as e:
                    log.warning("adapter cycle failed: %s %s", e.status, e.reason)
                except Exception:
                    log.exception("adapter cycle failed; retrying next poll")
                await asyncio.sleep(max(0.0, poll - (self.clock() - started)))

    async def cycle(self, session: aiohttp.ClientSession) -> None:
        mds: Sequence[Mapping[str, Any]] = (
            self.cache.model_deployments()
            if self.cache is not None
            else await asyncio.to_thread(kube.list_all_model_deployments, self.api)
        )
        wanted = [
            b
            for b in mds
            if matches(b["metadata"]["namespace"], self.namespaces)
            and not b["metadata"].get("deletionTimestamp")
            and ((b.get("spec") or {}).get("adapters") or _has_adapter_status(b))
        ]
        self._forget_except({_key(b) for b in wanted})
        if not wanted:
            return
        # A group's workers serve no API: adapters are loaded into its leader.
        pods: Sequence[Mapping[str, Any]] = (
            serving(self.cache.all_of("Pod"))
            if self.cache is not None
            else await asyncio.to_thread(
                kube.list_cluster_wide, self.api, "pods", SERVING_POD_SELECTOR
            )
        )
        by_owner: dict[ObjectKey, list[Mapping[str, Any]]] = defaultdict(list)
        for p in pods:
            meta = p["metadata"]
            by_owner[(meta["namespace"], meta["labels"][OWNER_LABEL])].append(p)
        await asyncio.gather(
            *(self.serve_one(session, body, by_owner.get(_key(body), [])) for body in wanted)
        )

    async def serve_one(
        self,
        session: aiohttp.ClientSession,
        body: Mapping[str, Any],
        pods: Sequence[Mapping[str, Any]],
    ) -> None:
        namespace, name = _key(body)
        try:
            md = parse_model_deployment(body)
        except SpecError:
            return  # the reconciler reports it
        declared = {a.name: adapter_path(a.source) for a in md.spec.adapters}
        engine = engine_for(md.spec.engine)
        runtime_api = engine.adapters.runtime_api if engine.adapters is not None else None
        ready = classify_pods(pods).ready
        self.failures.forget_pods_except(namespace, name, set(ready))
        if runtime_api is None:
            # Loaded at start (or not at all), and not listed by the engine: a ready pod
            # serves what it started with. A change rolls the pods.
            started_with = {p["metadata"]["name"]: engine.started_adapters(p) for p in pods}
            reports = [PodReport(pod, started_with.get(pod, frozenset())) for pod in sorted(ready)]
        else:
            reports = list(
                await asyncio.gather(
                    *(
                        self._serve_pod(
                            session, runtime_api, body, pod, f"http://{ip}:{engine.port}", declared
                        )
                        for pod, ip in sorted(ready.items())
                    )
                )
            )
        errors = {a: e for a in declared if (e := self.failures.last_error(namespace, name, a))}
        status = adapters_status(
            list(declared), reports, errors, int(body["metadata"].get("generation") or 0)
        )
        if runtime_api is None and engine.adapters is not None:
            cond = status["conditions"][0]
            cond["message"] = (
                f"{engine.display_name} loads adapters at start, so a change "
                "to spec.adapters rolls the pods: " + cond["message"]
            )
        if loop_status_changed(status, body.get("status")):
            await asyncio.to_thread(self._write_status, (namespace, name), status, body)

    async def _serve_pod(
        self,
        session: aiohttp.ClientSession,
        api: AdapterApi,
        body: Mapping[str, Any],
        pod: str,
        base_url: str,
        declared: Mapping[str, str],
    ) -> PodReport:
        namespace, name = _key(body)
        try:
            loaded = await loaded_adapters(session, api, base_url)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.info("adapters %s/%s: %s: cannot list adapters: %s", namespace, name, pod, e)
            return PodReport(pod, None)
        actions = pod_actions(declared, loaded, (namespace, name, pod), self.failures, self.clock())
        changed = False
        for adapter, path in actions.load:
            key = (namespace, name, pod, adapter)
            self.leadership.check()
            try:
                answer = await load_adapter(session, api, base_url, adapter, path)
            except (aiohttp.ClientError, TimeoutError) as e:
                self.failures.record(key, path, f"load request failed: {e}", self.clock())
                continue
            if answer.ok:
                self.failures.clear(key)
                self.announced.pop((namespace, name, adapter), None)
                changed = True
                log.info("adapters %s/%s: loaded %s on %s", namespace, name, adapter, pod)
                continue
            failure = self.failures.record(key, path, answer.message, self.clock())
            await self._announce(body, adapter, pod, failure.message)
        for adapter in actions.unload:
            self.leadership.check()
            try:
                answer = await unload_adapter(session, api, base_url, adapter)
            except (aiohttp.ClientError, TimeoutError) as e:
                log.info(
                    "adapters %s/%s: unload %s on %s failed: %s", namespace, name, adapter, pod, e
                )
                continue
            changed = changed or answer.ok
            if answer.ok:
                log.info("adapters %s/%s: unloaded %s on %s", namespace, name, adapter, pod)
        if not changed:
            return PodReport(pod, loaded)
        # What the engine lists now, not what was sent.
        try:
            return PodReport(pod, await loaded_adapters(session, api, base_url))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return PodReport(pod, None)

    def _forget_except(self, keys: set[ObjectKey]) -> None:
        """Drop failures and announcements of ModelDeployments no longer served here."""
        for failure_key in [k for k in self.failures.failures if k[:2] not in keys]:
            self.failures.clear(failure_key)
        for announced in [k for k in self.announced if k[:2] not in keys]:
            del self.announced[announced]

    async def _announce(
        self, body: Mapping[str, Any], adapter: str, pod: str, message: str
    ) -> None:
        namespace, name = _key(body)
        key = (namespace, name, adapter)
        if self.announced.get(key) == message:
            return
        self.announced[key] = message
        text = f"adapter {adapter} refused by pod {pod}: {message}"
        log.warning("adapters %s/%s: %s", namespace, name, text)
        await asyncio.to_thread(post_event, self.api, body, "AdapterFailed", text, "Warning")

    def _write_status(
        self, key: ObjectKey, status: dict[str, Any], body: Mapping[str, Any]
    ) -> None:
        result = apply_loop_status(
            self.api, key, status, body.get("status"), kube.ADAPTERS_FIELD_MANAGER
        )
        if self.cache is not None and result is not None:
            self.cache.wrote(KIND, result)


def _key(body: Mapping[str, Any]) -> ObjectKey:
    return (body["metadata"]["namespace"], body["metadata"]["name"])


def _has_adapter_status(body: Mapping[str, Any]) -> bool:
    """Adapters were declared before: their status must be brought to the new truth."""
    status = body.get("status")
    return isinstance(status, Mapping) and bool(status.get("adapters"))
