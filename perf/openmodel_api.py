"""The names bench_reconcile takes from the operator package: its parser, renderer and
status builder, for the floors (what the operator would write, written by a plain client).

The operator itself runs as its own process (`harness.operator` starts `python -m
openmodel`, from an old revision too with `--rev`), so these are the only operator
modules a benchmark of the reconcile path imports; the engine-side names (autoscaler,
simulator, engines) are in `perf.openmodel_engines`, which bench_reconcile does not
import. When the operator package moves a name, one of these two modules follows it.
"""

from __future__ import annotations

from openmodel.api import GROUP, OWNER_LABEL, PLURAL, VERSION
from openmodel.clock import utc_now
from openmodel.config import PlatformConfig
from openmodel.engines import parse_model_deployment
from openmodel.reconcile.plan import make_plan
from openmodel.reconcile.render import endpoint, label_selector
from openmodel.reconcile.status import Observation as StatusObservation
from openmodel.reconcile.status import build_status

__all__ = [
    "GROUP",
    "OWNER_LABEL",
    "PLURAL",
    "VERSION",
    "PlatformConfig",
    "StatusObservation",
    "build_status",
    "endpoint",
    "label_selector",
    "make_plan",
    "parse_model_deployment",
    "utc_now",
]
