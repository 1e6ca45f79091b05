"""`python -m openmodel`: run the operator (all namespaces, or those OPENMODEL_NAMESPACES names;
see `openmodel.namespaces`)."""

from __future__ import annotations

import os

import kopf

import openmodel.main  # noqa: F401  (registers the handlers)
from openmodel.namespaces import patterns_from_env


def run() -> None:
    namespaces = patterns_from_env()
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=os.environ.get("OPENMODEL_LIVENESS", "http://0.0.0.0:8080/healthz"),
    )


if __name__ == "__main__":
    run()
