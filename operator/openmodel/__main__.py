"""`python -m openmodel`: run the operator (all namespaces, or those OPENMODEL_NAMESPACES names;
see `openmodel.namespaces`)."""

from __future__ import annotations

import faulthandler
import os
import signal

import kopf

import openmodel.main  # noqa: F401  (registers the handlers)
from openmodel.kube.kopf_tuning import count_the_watch_listing_of_namespaces
from openmodel.namespaces import patterns_from_env

LOG_LEVELS = ("debug", "info", "warning")


def configure_logging(level: str) -> None:
    """`OPENMODEL_LOG_LEVEL`: unset keeps Python's default (warnings and errors on stderr);
    `info` adds kopf's per-handler lines, `debug` also its watch streams and toggles."""
    if not level:
        return
    if level not in LOG_LEVELS:
        raise SystemExit(f"OPENMODEL_LOG_LEVEL={level!r}: expected one of {', '.join(LOG_LEVELS)}")
    kopf.configure(debug=level == "debug", quiet=level == "warning")


def run() -> None:
    configure_logging(os.environ.get("OPENMODEL_LOG_LEVEL", "").strip().lower())
    # `kill -USR1` prints every thread's stack to stderr, the operator going on: for a
    # pass or loop that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    namespaces = patterns_from_env()
    if namespaces:
        count_the_watch_listing_of_namespaces()
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=os.environ.get("OPENMODEL_LIVENESS", "http://0.0.0.0:8080/healthz"),
    )


if __name__ == "__main__":
    run()
