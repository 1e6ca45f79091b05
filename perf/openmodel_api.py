"""Every name the benchmarks and scripts take from the operator package, in one place.

The operator runs as its own process in the benchmarks (`harness.operator` starts
`python -m openmodel`, from an old revision too): these imports are what a script runs
in its own process: the renderer and status builder for bench_reconcile's floors, the
autoscaler's scrape-and-decide cycle for bench_autoscaler, the simulator, and the API
names the demo's engines read. When the operator package moves a name, this module is
the one to follow it.
"""

from __future__ import annotations

import openmodel.simulator.server as simulator_server
from openmodel.api import (
    GROUP,
    OWNER_LABEL,
    PLURAL,
    VERSION,
    parse_model_deployment,
)
from openmodel.autoscaler import (
    METRIC_NAMES,
    QueueReading,
    ScalingHistory,
    ScalingPolicy,
    Scraper,
    ScrapeTarget,
    decide,
    read_queue,
)
from openmodel.autoscaler import Observation as ScaleObservation
from openmodel.autoscaler.metrics import parse_exposition
from openmodel.clock import utc_now
from openmodel.config import PlatformConfig
from openmodel.engines import engine_for
from openmodel.engines.base import served_model_name
from openmodel.reconcile.plan import make_plan
from openmodel.reconcile.render import endpoint, label_selector
from openmodel.reconcile.status import Observation as StatusObservation
from openmodel.reconcile.status import build_status
from openmodel.simulator.exposition import EngineStats, render_vllm
from openmodel.simulator.server import SimulatorHandle, start_simulator

__all__ = [
    "GROUP",
    "METRIC_NAMES",
    "OWNER_LABEL",
    "PLURAL",
    "VERSION",
    "EngineStats",
    "PlatformConfig",
    "QueueReading",
    "ScaleObservation",
    "ScalingHistory",
    "ScalingPolicy",
    "ScrapeTarget",
    "Scraper",
    "SimulatorHandle",
    "StatusObservation",
    "build_status",
    "decide",
    "endpoint",
    "engine_for",
    "label_selector",
    "make_plan",
    "parse_exposition",
    "parse_model_deployment",
    "read_queue",
    "render_vllm",
    "served_model_name",
    "simulator_server",
    "start_simulator",
    "utc_now",
]
