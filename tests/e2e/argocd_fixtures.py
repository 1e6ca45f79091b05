"""The session's Argo CD (harness/argocd.py): one for all tests marked ``argocd``.

Imported by conftest.py. It runs against the session's control plane, in namespace
``argocd``; its files (logs, the repo-server's checkouts) live under the cluster's
workdir, which is kept when a test failed. On a failed session the tail of each
component's log is printed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from harness import Cluster
from harness.argocd import ArgoCD, start_argocd


@pytest.fixture(scope="session")
def argocd(
    cluster: Cluster, api_client: client.ApiClient, request: pytest.FixtureRequest
) -> Iterator[ArgoCD]:
    started = time.monotonic()
    instance = start_argocd(api_client, cluster.kubeconfig, cluster.workdir / "argocd")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")

    def report(line: str) -> None:
        if reporter is not None:
            reporter.write_line(line)
        else:
            print(line)

    report(f"argocd: started in {time.monotonic() - started:.1f} s (server {instance.server})")
    try:
        yield instance
        instance.check_alive()
    finally:
        if request.session.testsfailed:
            report(instance.logs())
        instance.stop()
