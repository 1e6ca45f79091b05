"""The engine-side names the scripts take from the operator package: the autoscaler's
scrape-and-decide cycle and its metric names (bench_autoscaler), the engine simulator
(bench_autoscaler, bench_autoscale_latency, demo_engines) and an engine's port and served
model name (demo_engines). One place to follow when engine facts move in the package.
"""

from __future__ import annotations

import openmodel.simulator.server as simulator_server
from openmodel.autoscaler import Observation as ScaleObservation
from openmodel.autoscaler import ScalingHistory, ScalingPolicy, decide
from openmodel.engine_metrics.exposition import QueueReading, parse_exposition, read_queue
from openmodel.engine_metrics.scrape import Scraper, ScrapeTarget
from openmodel.engines import ENGINES, engine_for
from openmodel.engines.base import served_model_name
from openmodel.simulator.exposition import EngineStats, render_vllm
from openmodel.simulator.server import SimulatorHandle, start_simulator

# The queue and running gauges each engine states, by engine name.
METRIC_NAMES = {name: engine.metric_names for name, engine in ENGINES.items()}

__all__ = [
    "METRIC_NAMES",
    "EngineStats",
    "QueueReading",
    "ScaleObservation",
    "ScalingHistory",
    "ScalingPolicy",
    "ScrapeTarget",
    "Scraper",
    "SimulatorHandle",
    "decide",
    "engine_for",
    "parse_exposition",
    "read_queue",
    "render_vllm",
    "served_model_name",
    "simulator_server",
    "start_simulator",
]
