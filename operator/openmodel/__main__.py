"""`python -m openmodel`: run the operator (all namespaces, or OPENMODEL_NAMESPACES)."""

from __future__ import annotations

import os

import kopf

import openmodel.main  # noqa: F401  (registers the handlers)


def run() -> None:
    namespaces = [n for n in os.environ.get("OPENMODEL_NAMESPACES", "").split(",") if n]
    kopf.run(
        standalone=True,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=os.environ.get("OPENMODEL_LIVENESS", "http://0.0.0.0:8080/healthz"),
    )


if __name__ == "__main__":
    run()
