"""The gateway's Prometheus metrics, on a registry of its own (served at /metrics).

Labels: `namespace` and `model_deployment` name where the request was routed (for a
request to an external model by its own name, the ExternalModel's namespace and name;
an overflowed request counts under its ModelDeployment), `model` as the client asked
(errors before routing have `model=""` when none was readable).

Usage and limit counters add who asked: `identity` (`Caller.identity`) and
`caller_namespace` (the caller's namespace, "" for users and `anonymous`). Their values
come only from identities authentication accepted (or `anonymous`), and `model` only
from models the route table knows (an unknown one is refused before), so a caller
cannot grow the label sets with made-up values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

_LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0)
_HOLD_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
M = TypeVar("M", bound=MetricWrapperBase)


@dataclass
class GatewayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    # (metric, label values) -> its child: `labels()` validates and locks on every
    # call, several times per request on the proxy's path. Bounded as the metric is
    # (nothing here removes a label set).
    _children: dict[tuple[int, tuple[str, ...]], Any] = field(default_factory=dict)

    def child(self, metric: M, *values: str) -> M:
        """`metric.labels(*values)`, looked up once."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def __post_init__(self) -> None:
        r = self.registry
        route = ["namespace", "model_deployment", "model"]
        self.requests = Counter(
            "openmodel_gateway_requests",
            "Requests answered, by where they went and the HTTP status returned.",
            [*route, "code"],
            registry=r,
        )
        self.errors = Counter(
            "openmodel_gateway_errors",
            "Requests the gateway answered with an error of its own, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.held = Gauge(
            "openmodel_gateway_held_requests",
            "Requests waiting for a ready replica now.",
            ["namespace", "model_deployment"],
            registry=r,
        )
        self.in_flight = Gauge(
            "openmodel_gateway_in_flight_requests",
            "Requests forwarded and not finished.",
            ["namespace", "model_deployment"],
            registry=r,
        )
        self.hold_seconds = Histogram(
            "openmodel_gateway_hold_seconds",
            "How long requests were held before being forwarded or refused.",
            ["namespace", "model_deployment"],
            buckets=_HOLD_BUCKETS,
            registry=r,
        )
        who = ["caller_namespace", "identity"]
        self.usage_requests = Counter(
            "openmodel_gateway_usage_requests",
            "Requests an engine answered (any status), by caller and model.",
            [*route, *who],
            registry=r,
        )
        self.usage_prompt_tokens = Counter(
            "openmodel_gateway_usage_prompt_tokens",
            "Prompt tokens, as the engine's `usage` counted them, by caller and model.",
            [*route, *who],
            registry=r,
        )
        self.usage_completion_tokens = Counter(
            "openmodel_gateway_usage_completion_tokens",
            "Completion tokens, as the engine's `usage` counted them, by caller and model.",
            [*route, *who],
            registry=r,
        )
        self.usage_estimated_tokens = Counter(
            "openmodel_gateway_usage_estimated_tokens",
            "Tokens of answers the engine gave no usage for (a stream the client left or "
            "the engine cut): the prompt estimate plus one token per event streamed. Not "
            "in the prompt/completion counters.",
            [*route, *who],
            registry=r,
        )
        self.rate_limited = Counter(
            "openmodel_gateway_rate_limited_requests",
            "Requests refused with 429 by a limit, by caller, scope (identity or "
            "namespace) and reason.",
            [*route, *who, "scope", "reason"],
            registry=r,
        )
        self.limit_replicas = Gauge(
            "openmodel_gateway_limit_replicas",
            "Gateway replicas this one believes share the limits (each enforces limit / N).",
            registry=r,
        )
        self.overflow_requests = Counter(
            "openmodel_gateway_overflow_requests",
            "Requests of a ModelDeployment sent to its overflow ExternalModel instead of "
            "held, by reason (starting: no ready replica; queue_depth: queue above "
            "spec.gateway.overflow.queueDepthAbove per replica).",
            [*route, "external_model", "reason"],
            registry=r,
        )
        self.external_cost = Counter(
            "openmodel_gateway_external_cost",
            "What external models' answers cost, from their usage and spec.price (in the "
            "currency the prices are given in), by ExternalModel.",
            ["namespace", "external_model"],
            registry=r,
        )
        self.added_latency = Histogram(
            "openmodel_gateway_added_latency_seconds",
            "Handler start to response headers sent, minus hold time and minus the wait "
            "for the engine's headers (which includes the gateway's own upstream send): a "
            "lower bound of what the gateway adds; the benchmark measures the full cost.",
            ["namespace", "model_deployment"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
