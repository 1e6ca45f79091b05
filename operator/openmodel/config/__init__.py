"""Platform configuration: what the platform team sets once for the whole operator.

Loaded from a YAML file (env `OPENMODEL_CONFIG`, mounted from a ConfigMap by the Helm
chart). Every key is optional:

```yaml
engineImages: {<engine>: "<image>", <engine>-cpu: "<image>"}  # over each engine's default
                         # (Engine.image, .cpu_image); <engine>-cpu: for gpu.type cpu
accelerators:            # added to / overriding the built-in catalog
  amd-mi300x:
    memoryGiB: 192
    nodeLabel: amd.com/gpu.product-name
    nodeLabelValues: [AMD_Instinct_MI300X_OAM]
    resourceName: amd.com/gpu
    tolerations: [{key: amd.com/gpu, operator: Exists}]
autoscaler:
  pollSeconds: 5
  tolerance: 0.1
adapters:
  pollSeconds: 5         # LoRA adapters: how often each pod's loaded set is checked
gateway:                 # the OpenAI gateway (python -m openmodel.gateway)
  namespaces: []         # routed namespaces (patterns as OPENMODEL_NAMESPACES); [] = all
  holdSeconds: 300       # how long a request waits for a model at zero replicas
  holdQueueLength: 256   # requests held per model at most; more get 503 at once
  maxBodyBytes: 8388608  # larger request bodies get 413
  queuePollSeconds: 2    # how often the gateway reads the engines' queue gauges
  # the gateway pods the autoscaler reads held requests from (GET :9090/demand):
  demandSelector: app.kubernetes.io/name=openmodel,app.kubernetes.io/component=gateway
  demandNamespace: openmodel-system
  # the gateway's ServiceAccount (in demandNamespace): whose right to read each
  # ExternalModel's key Secret the operator checks (docs/api.md, "ExternalModel")
  serviceAccountName: openmodel-gateway
  demandUrls: []         # or fixed demand URLs (local runs)
  auth: {mode: enforce}  # off | audit | enforce, caches (config/gateway_auth.py)
  tls: {}                # {certFile, keyFile}: serve HTTPS (config/gateway_auth.py)
  limits: {}             # per identity / per namespace budgets (config/gateway_limits.py)
  balancing: {policy: prefix, prefixCharacters: 512, loadFactor: 1.25}  # or policy: least-load
startupBudgetSeconds: 1800
clusterDomain: cluster.local
operator:                # the operator process itself (docs/configuration.md)
  workers: 16            # reconcile passes run at once (the work queue's workers)
  apiQPS: 100            # requests per second to the API server, sustained (token bucket)
  apiBurst: 200          # ... and in a burst; 429 answers are retried after Retry-After
  cacheAuditSeconds: 3600  # compare the watch cache with one LIST per kind; 0 = never
modelResolver:           # read config.json from the Hub for sizing (config/model_resolver.py)
  endpoint: null         # the Hub's base URL; env HF_ENDPOINT wins; neither: catalogue only
  tokenFile: null        # the only token the operator reads (never hfTokenSecretRef)
cache:                   # the weights cache and its download Job (config/cache.py)
  accessMode: ReadWriteMany
  downloaderImage: openmodel/operator:0.1.0
inferenceExtension:      # InferencePool + HTTPRoute per model (config/inference_extension.py)
  enabled: false
  gateway: {name: inference-gateway, namespace: gateway-system}
  endpointPickerRef: {name: "{name}-epp", port: 9002}
privacy:                 # what may leave an engine pod, who may reach it (config/privacy.py)
  engineTelemetry: false # engines' own usage reporting stays off unless true
  networkPolicy: {enabled: true}  # a NetworkPolicy per ModelDeployment, its peers
cost:                    # prices and metering: GPU-seconds, tokens, cost (config/cost.py)
  currency: USD
  gpuHourPrices: {nvidia-h100-80gb: 2.5}
```
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml

from openmodel.accelerators import AcceleratorCatalog, AcceleratorConfigError
from openmodel.api import BALANCING_POLICIES
from openmodel.config.cache import CacheConfig, parse_cache
from openmodel.config.cost import CostConfig, parse_cost
from openmodel.config.errors import (
    ConfigError as ConfigError,  # re-exported: the error of every key
)
from openmodel.config.errors import checked_mapping
from openmodel.config.gateway_auth import (
    AuthMode as AuthMode,  # re-exported: the gateway's and the tests' one import
)
from openmodel.config.gateway_auth import (
    GatewayAuthConfig,
    GatewayTlsConfig,
    parse_gateway_auth,
    parse_gateway_tls,
)
from openmodel.config.gateway_limits import GatewayLimitsConfig, parse_gateway_limits
from openmodel.config.inference_extension import (
    InferenceExtensionConfig,
    parse_inference_extension,
)
from openmodel.config.model_resolver import (
    ModelResolverConfig,
    ResolverConfigError,
    parse_model_resolver,
)
from openmodel.config.privacy import PrivacyConfig, parse_privacy
from openmodel.engines import default_images

# Each engine's own image (engines/<name>.py), and `<engine>-cpu` where it has another
# build for gpu.type cpu.
DEFAULT_ENGINE_IMAGES: Mapping[str, str] = default_images()


@dataclass(frozen=True)
class AutoscalerConfig:
    poll_seconds: float = 5.0
    tolerance: float = 0.1
    scrape_timeout_seconds: float = 2.0


@dataclass(frozen=True)
class AdaptersConfig:
    # How often the adapter loop compares each pod's loaded adapters with the spec.
    poll_seconds: float = 5.0


# Where the gateway listens, facts of the manifests and the chart, not settings: the
# OpenAI API (and the kubelet's probes) on GATEWAY_PORT, its Service's port; /metrics and
# /demand on GATEWAY_METRICS_PORT, always plain HTTP, so a NetworkPolicy can open it to
# the monitoring namespace and the operator (whose autoscaler reads `GET :9090/demand`)
# only, whoever may call the API.
GATEWAY_PORT: Final = 8080
GATEWAY_METRICS_PORT: Final = 9090


@dataclass(frozen=True)
class GatewayConfig:
    namespaces: tuple[str, ...] = ()
    hold_seconds: float = 300.0
    hold_queue_length: int = 256
    max_body_bytes: int = 8 * 1024 * 1024
    queue_poll_seconds: float = 2.0
    demand_selector: str = "app.kubernetes.io/name=openmodel,app.kubernetes.io/component=gateway"
    demand_namespace: str = "openmodel-system"
    service_account_name: str = "openmodel-gateway"
    demand_urls: tuple[str, ...] = ()
    auth: GatewayAuthConfig = field(default_factory=GatewayAuthConfig)
    tls: GatewayTlsConfig = field(default_factory=GatewayTlsConfig)
    limits: GatewayLimitsConfig = field(default_factory=GatewayLimitsConfig)
    balancing: BalancingConfig = field(default_factory=lambda: BalancingConfig())
    # Gateway processes per pod sharing the API port (gateway/workers/); 1: one process.
    workers: int = 1


@dataclass(frozen=True)
class BalancingConfig:
    """How the gateway picks a pod (gateway/balancer.py, gateway/affinity.py)."""

    policy: str = "prefix"
    # The prompt's leading characters that make its key: about a system prompt's length.
    prefix_characters: int = 512
    # A pod may take a request while its load stays within factor x the mean load.
    load_factor: float = 1.25


def _parse_balancing(raw: Any) -> BalancingConfig:
    raw = checked_mapping(
        {} if raw is None else raw,
        "gateway.balancing",
        ("policy", "prefixCharacters", "loadFactor"),
    )
    d = BalancingConfig()
    policy = raw.get("policy", d.policy)
    if policy not in BALANCING_POLICIES:
        raise ConfigError(
            f"gateway.balancing.policy must be one of {', '.join(BALANCING_POLICIES)}, "
            f"got {policy!r}"
        )
    factor = raw.get("loadFactor", d.load_factor)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not factor >= 1:
        raise ConfigError(f"gateway.balancing.loadFactor must be a number >= 1, got {factor!r}")
    return BalancingConfig(
        policy=policy,
        prefix_characters=_whole(raw, "prefixCharacters", "gateway.balancing", d.prefix_characters),
        load_factor=float(factor),
    )


@dataclass(frozen=True)
class OperatorConfig:
    # 16 threads: a pass mostly waits on the API server (a few ms per request), and the
    # client's rate limit, not the pool, is what protects the API server in a burst.
    workers: int = 16
    # client-go's defaults (5 / 10) would make a 1,000-object burst take minutes; at 50 / 100
    # the bucket itself was the bottleneck of a 1,000-object burst (49.8 requests/s flat
    # while a plain client got 58-73/s from the same API server; docs/benchmarks.md).
    # Beyond this, API Priority and Fairness answers 429 and the client waits Retry-After.
    api_qps: float = 100.0
    api_burst: int = 200
    cache_audit_seconds: float = 3600.0


@dataclass(frozen=True)
class PlatformConfig:
    engine_images: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_ENGINE_IMAGES))
    accelerators: AcceleratorCatalog = field(default_factory=AcceleratorCatalog)
    autoscaler: AutoscalerConfig = field(default_factory=AutoscalerConfig)
    adapters: AdaptersConfig = field(default_factory=AdaptersConfig)
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    # Loading a 70B model from a cold cache can take well over 20 minutes.
    startup_budget_seconds: int = 1800
    cluster_domain: str = "cluster.local"
    inference_extension: InferenceExtensionConfig = field(default_factory=InferenceExtensionConfig)
    model_resolver: ModelResolverConfig = field(default_factory=ModelResolverConfig)
    operator: OperatorConfig = field(default_factory=OperatorConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    cost: CostConfig = field(default_factory=CostConfig)


def _number(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{where}.{key} must be a number > 0, got {value!r}")
    return float(value)


def _strings(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{where}.{key} must be a list of non-empty strings, got {value!r}")
    return tuple(value)


def _whole(raw: Mapping[str, Any], key: str, where: str, default: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}.{key} must be an integer >= 1, got {value!r}")
    return value


def _text(raw: Mapping[str, Any], key: str, where: str, default: str) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value


def _parse_gateway(raw: Any) -> GatewayConfig:
    known = (
        "namespaces", "holdSeconds", "holdQueueLength", "maxBodyBytes", "queuePollSeconds",
        "demandSelector", "demandNamespace", "demandUrls", "auth", "tls", "limits", "balancing",
        "serviceAccountName", "workers",
    )  # fmt: skip
    raw = checked_mapping(raw, "gateway", known)
    d = GatewayConfig()
    return GatewayConfig(
        namespaces=_strings(raw, "namespaces", "gateway"),
        hold_seconds=_number(raw, "holdSeconds", "gateway", d.hold_seconds),
        hold_queue_length=_whole(raw, "holdQueueLength", "gateway", d.hold_queue_length),
        max_body_bytes=_whole(raw, "maxBodyBytes", "gateway", d.max_body_bytes),
        queue_poll_seconds=_number(raw, "queuePollSeconds", "gateway", d.queue_poll_seconds),
        demand_selector=_text(raw, "demandSelector", "gateway", d.demand_selector),
        demand_namespace=_text(raw, "demandNamespace", "gateway", d.demand_namespace),
        demand_urls=_strings(raw, "demandUrls", "gateway"),
        service_account_name=_text(raw, "serviceAccountName", "gateway", d.service_account_name),
        auth=parse_gateway_auth(raw.get("auth")),
        tls=parse_gateway_tls(raw.get("tls")),
        limits=parse_gateway_limits(raw.get("limits")),
        balancing=_parse_balancing(raw.get("balancing")),
        workers=_whole(raw, "workers", "gateway", d.workers),
    )


def _parse_operator(raw: Any) -> OperatorConfig:
    raw = checked_mapping(raw, "operator", ("workers", "apiQPS", "apiBurst", "cacheAuditSeconds"))
    d = OperatorConfig()
    audit = raw.get("cacheAuditSeconds", d.cache_audit_seconds)
    if isinstance(audit, bool) or not isinstance(audit, int | float) or audit < 0:
        raise ConfigError(f"operator.cacheAuditSeconds must be a number >= 0, got {audit!r}")
    return OperatorConfig(
        workers=_whole(raw, "workers", "operator", d.workers),
        api_qps=_number(raw, "apiQPS", "operator", d.api_qps),
        api_burst=_whole(raw, "apiBurst", "operator", d.api_burst),
        cache_audit_seconds=float(audit),
    )


def parse_config(raw: Mapping[str, Any]) -> PlatformConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError("the platform config must be a YAML mapping")
    images_raw = raw.get("engineImages", {})
    if not isinstance(images_raw, Mapping) or not all(
        isinstance(v, str) and v for v in images_raw.values()
    ):
        raise ConfigError("engineImages must map engine names to image strings")
    images = {**DEFAULT_ENGINE_IMAGES, **images_raw}
    acc_raw = raw.get("accelerators", {})
    if not isinstance(acc_raw, Mapping):
        raise ConfigError("accelerators must be a mapping of name to entry")
    try:
        catalog = AcceleratorCatalog().extended(acc_raw)
    except AcceleratorConfigError as e:
        raise ConfigError(str(e)) from None
    auto_raw = raw.get("autoscaler", {})
    if not isinstance(auto_raw, Mapping):
        raise ConfigError("autoscaler must be a mapping")
    defaults = AutoscalerConfig()
    autoscaler = AutoscalerConfig(
        poll_seconds=_number(auto_raw, "pollSeconds", "autoscaler", defaults.poll_seconds),
        tolerance=float(auto_raw.get("tolerance", defaults.tolerance)),
        scrape_timeout_seconds=_number(
            auto_raw, "scrapeTimeoutSeconds", "autoscaler", defaults.scrape_timeout_seconds
        ),
    )
    adapters_raw = raw.get("adapters", {})
    if not isinstance(adapters_raw, Mapping):
        raise ConfigError("adapters must be a mapping")
    adapters = AdaptersConfig(
        poll_seconds=_number(adapters_raw, "pollSeconds", "adapters", AdaptersConfig().poll_seconds)
    )
    gateway = _parse_gateway(raw.get("gateway", {}))
    budget = raw.get("startupBudgetSeconds", 1800)
    if not isinstance(budget, int) or budget < 10:
        raise ConfigError("startupBudgetSeconds must be an integer >= 10")
    domain = raw.get("clusterDomain", "cluster.local")
    if not isinstance(domain, str) or not domain:
        raise ConfigError("clusterDomain must be a non-empty string")
    return PlatformConfig(
        engine_images=images,
        accelerators=catalog,
        autoscaler=autoscaler,
        adapters=adapters,
        gateway=gateway,
        startup_budget_seconds=budget,
        cluster_domain=domain,
        inference_extension=parse_inference_extension(raw.get("inferenceExtension")),
        model_resolver=_model_resolver(raw.get("modelResolver")),
        operator=_parse_operator(raw.get("operator", {})),
        privacy=parse_privacy(raw.get("privacy")),
        cache=parse_cache(raw.get("cache")),
        cost=parse_cost(raw.get("cost")),
    )


def _model_resolver(raw: Any) -> ModelResolverConfig:
    try:
        return parse_model_resolver(raw)
    except ResolverConfigError as e:
        raise ConfigError(str(e)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> PlatformConfig:
    """Load the platform config from `path`, or env OPENMODEL_CONFIG, or defaults."""
    chosen = path or os.environ.get("OPENMODEL_CONFIG")
    if not chosen:
        return PlatformConfig()
    try:
        text = Path(chosen).read_text()
    except OSError as e:
        raise ConfigError(f"cannot read platform config {chosen}: {e.strerror}") from None
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"platform config {chosen} is not valid YAML: {e}") from None
    return parse_config(raw)
