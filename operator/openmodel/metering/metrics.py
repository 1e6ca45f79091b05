"""The metering's Prometheus series (docs/cost.md), on the operator's metrics port.

Counters per ModelDeployment (`namespace`, `name`; the GPU ones also `accelerator`), and
the prices as gauges so that a dashboard can show them beside the spend. Only the leader
counts: a replica that is not (or no longer) the leader exposes none of these series,
so `sum` over the operator's pods never counts twice.
"""

from __future__ import annotations

import contextlib

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from openmodel.config.cost import CostConfig
from openmodel.metering.ledger import ModelKey, Totals

__all__ = ["MeteringMetrics"]


class MeteringMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        md = ["namespace", "name"]
        self.gpu_seconds = Counter(
            "openmodel_gpu_seconds",
            "GPU-seconds held by a ModelDeployment's pods: bound to a node and not "
            "finished (loading, idle and busy), times their GPUs.",
            [*md, "accelerator"],
            registry=registry,
        )
        self.busy_gpu_seconds = Counter(
            "openmodel_gpu_busy_seconds",
            "The part of openmodel_gpu_seconds during which the engine was serving "
            "requests when read (its running-requests gauge above 0).",
            [*md, "accelerator"],
            registry=registry,
        )
        self.cpu_core_seconds = Counter(
            "openmodel_cpu_core_seconds",
            "Requested CPU core-seconds of the pods of CPU engines (gpu.type cpu).",
            md,
            registry=registry,
        )
        self.memory_gib_seconds = Counter(
            "openmodel_memory_gib_seconds",
            "Requested memory GiB-seconds of the pods of CPU engines (gpu.type cpu).",
            md,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "openmodel_engine_prompt_tokens",
            "Prompt tokens the engines counted (their own counters, summed over pods; "
            "includes traffic that did not pass the gateway).",
            md,
            registry=registry,
        )
        self.generation_tokens = Counter(
            "openmodel_engine_generation_tokens",
            "Generated tokens the engines counted (their own counters, summed over pods).",
            md,
            registry=registry,
        )
        self.cost = Counter(
            "openmodel_cost",
            "What the held resources cost at the platform config's prices (cost:).",
            [*md, "currency"],
            registry=registry,
        )
        self.cost_per_hour = Gauge(
            "openmodel_cost_per_hour",
            "What a ModelDeployment's pods cost per hour as of the last poll.",
            [*md, "currency"],
            registry=registry,
        )
        self.polls = Counter(
            "openmodel_metering_polls",
            "Metering polls this replica ran as the leader.",
            registry=registry,
        )
        self.gpu_hour_price = Gauge(
            "openmodel_gpu_hour_price",
            "The platform config's price per GPU-hour, per accelerator.",
            ["accelerator", "currency"],
            registry=registry,
        )

    def show_prices(self, prices: CostConfig) -> None:
        for accelerator, price in prices.gpu_hour_prices.items():
            self.gpu_hour_price.labels(accelerator, prices.currency).set(price)

    def add(self, key: ModelKey, accelerator: str, delta: Totals, currency: str) -> None:
        namespace, name = key
        self.gpu_seconds.labels(namespace, name, accelerator).inc(delta.gpu_seconds)
        self.busy_gpu_seconds.labels(namespace, name, accelerator).inc(delta.busy_gpu_seconds)
        self.cpu_core_seconds.labels(namespace, name).inc(delta.cpu_core_seconds)
        self.memory_gib_seconds.labels(namespace, name).inc(delta.memory_gib_seconds)
        self.prompt_tokens.labels(namespace, name).inc(delta.prompt_tokens)
        self.generation_tokens.labels(namespace, name).inc(delta.generation_tokens)
        self.cost.labels(namespace, name, currency).inc(delta.cost)

    def set_rate(self, key: ModelKey, per_hour: float, currency: str) -> None:
        self.cost_per_hour.labels(*key, currency).set(per_hour)

    def forget(self, key: ModelKey, accelerator: str, currency: str) -> None:
        namespace, name = key
        for counter in (self.gpu_seconds, self.busy_gpu_seconds):
            _remove(counter, namespace, name, accelerator)
        for counter in (
            self.cpu_core_seconds,
            self.memory_gib_seconds,
            self.prompt_tokens,
            self.generation_tokens,
        ):
            _remove(counter, namespace, name)
        _remove(self.cost, namespace, name, currency)
        _remove(self.cost_per_hour, namespace, name, currency)


def _remove(metric: Counter | Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set
        metric.remove(*labels)
