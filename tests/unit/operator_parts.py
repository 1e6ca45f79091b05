"""An `Operator` (operator_root.py) built from its real parts, with no API server behind
them, for unit tests of the composition root and of main.py's handlers."""

from __future__ import annotations

from openmodel.adapters.loop import AdapterLoop
from openmodel.autoscaler.loop import AutoscalerLoop
from openmodel.config import PlatformConfig
from openmodel.kube.cache import ObjectCache
from openmodel.model_resolver.store import ModelConfigStore
from openmodel.operator_root import Operator, build_operator
from openmodel.reconcile.reconciler import Reconciler


def new_operator(
    config: PlatformConfig | None = None, model_configs: ModelConfigStore | None = None
) -> Operator:
    config = config or PlatformConfig()
    api = object()  # any request would fail: these tests make none
    cache = ObjectCache()
    reconciler = Reconciler(api, config, model_configs=model_configs, cache=cache)  # type: ignore[arg-type]
    autoscaler = AutoscalerLoop(api, config, cache=cache)  # type: ignore[arg-type]
    adapters = AdapterLoop(api, config, cache=cache)  # type: ignore[arg-type]
    return build_operator(config, cache, reconciler, autoscaler, adapters)
