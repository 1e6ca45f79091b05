"""Read the demand the gateways hold: ``GET <gateway>/demand`` on every gateway.

Each gateway answers (see ``openmodel.gateway.demand``)::

    {"models": [{"namespace": "team-a", "name": "llama", "held": 3, "inFlight": 1,
                 "idleSeconds": 12.5}, ...]}

and ``read_demand`` sums them per ModelDeployment. A gateway that does not answer, or
answers garbage, makes every ``Demand`` incomplete (idleness unknown, so nothing goes
to zero on its account) while what the others report still wakes models up.

The gateways are found as pods (`gateway_demand_urls`: their IPs, on the gateway's metrics
port, where /demand is served apart from the OpenAI API) plus any fixed URLs of the
platform config (`gateway.demandUrls`, local runs).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl

from openmodel.autoscaler.zero import Demand
from openmodel.config import GATEWAY_METRICS_PORT

ObjectKey = tuple[str, str]
# Counts above this are garbage, not demand: an integer of 400 digits parses from JSON,
# and float() of it (the decision's queue depth) raises OverflowError.
_MAX_COUNT = 2**53


@dataclass(frozen=True, slots=True)
class DemandReport:
    by_model: Mapping[ObjectKey, Demand]
    complete: bool
    failures: tuple[str, ...] = ()

    def for_model(self, key: ObjectKey) -> Demand:
        found = self.by_model.get(key)
        if found is None:
            return Demand(complete=self.complete)
        return found


def _entries(body: Any) -> list[tuple[ObjectKey, int, int, float | None]]:
    if not isinstance(body, Mapping) or not isinstance(body.get("models"), list):
        raise ValueError("not a demand document (no `models` list)")
    out = []
    for entry in body["models"]:
        if not isinstance(entry, Mapping):
            raise ValueError("a `models` entry is not an object")
        ns, name = entry.get("namespace"), entry.get("name")
        held, in_flight = entry.get("held", 0), entry.get("inFlight", 0)
        idle = entry.get("idleSeconds")
        if not (isinstance(ns, str) and isinstance(name, str)):
            raise ValueError("a `models` entry lacks namespace/name")
        for value in (held, in_flight):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 0 <= value <= _MAX_COUNT
            ):
                raise ValueError(f"{ns}/{name}: held/inFlight must be integers in [0, 2^53]")
        if idle is not None and (
            isinstance(idle, bool)
            or not isinstance(idle, int | float)
            or (isinstance(idle, int) and idle > _MAX_COUNT)  # isfinite(10**400) raises
            or not math.isfinite(idle)
            or idle < 0
        ):
            raise ValueError(f"{ns}/{name}: idleSeconds must be a number >= 0")
        out.append(((ns, name), held, in_flight, None if idle is None else float(idle)))
    return out


def gateway_demand_urls(pods: Sequence[Mapping[str, Any]]) -> list[str]:
    """The /demand URL of every running gateway pod that is not being deleted (one that
    is leaving finishes its requests but takes no new ones)."""
    urls = []
    for pod in pods:
        status = pod.get("status") or {}
        ip = status.get("podIP")
        leaving = (pod.get("metadata") or {}).get("deletionTimestamp")
        if ip and status.get("phase") == "Running" and not leaving:
            # URL.build brackets an IPv6 pod IP.
            url = yarl.URL.build(scheme="http", host=ip, port=GATEWAY_METRICS_PORT, path="/demand")
            urls.append(str(url))
    return urls


async def _fetch(session: aiohttp.ClientSession, url: str, timeout_s: float) -> Any:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with session.get(url, timeout=timeout) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return await response.json(content_type=None)


async def read_demand(
    session: aiohttp.ClientSession, urls: Sequence[str], timeout_s: float
) -> DemandReport:
    """Ask every gateway at once; never raises for a gateway's failure."""
    answers = await asyncio.gather(
        *(_fetch(session, url, timeout_s) for url in urls), return_exceptions=True
    )
    held: dict[ObjectKey, int] = {}
    flying: dict[ObjectKey, int] = {}
    idle: dict[ObjectKey, float] = {}
    failures: list[str] = []
    for url, answer in zip(urls, answers, strict=True):
        if isinstance(answer, BaseException):
            failures.append(f"{url}: {type(answer).__name__} {answer}".strip())
            continue
        try:
            entries = _entries(answer)
        except ValueError as e:
            failures.append(f"{url}: {e}")
            continue
        for key, h, f, i in entries:
            held[key] = held.get(key, 0) + h
            flying[key] = flying.get(key, 0) + f
            if i is not None:
                idle[key] = min(i, idle.get(key, math.inf))
    complete = not failures
    by_model = {
        key: Demand(
            held=held.get(key, 0),
            in_flight=flying.get(key, 0),
            idle_seconds=idle.get(key),
            complete=complete,
        )
        for key in held.keys() | flying.keys() | idle.keys()
    }
    return DemandReport(by_model=by_model, complete=complete, failures=tuple(failures))
