"""Fixtures for the e2e tests: one cluster per session (local control plane,
kind or $KUBECONFIG, see harness/cluster.py), a kubernetes ApiClient and a
fresh namespace per test. Helpers live in the ``harness`` package.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from argocd_fixtures import argocd  # noqa: F401  (the session's Argo CD)
from kubernetes import client

from harness import Cluster, create_namespace, delete_namespace, provide_cluster
from openmodel_fixtures import (  # noqa: F401  (fixtures for the operator tests)
    api_key_crd,
    crd,
    external_model_crd,
    gateway,
    operator,
    operator_dumps,
)
from real_engine.fixtures import (  # noqa: F401
    tiny_adapters,
    tiny_model,
    vllm_env,
    vllm_python,
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries what each running operator was waiting on at that
    moment (its tasks, kopf's blockers, its threads, its log's tail), so a failure that
    does not reproduce can still be read from CI's output."""
    report = yield
    if call.when == "call" and report.failed:
        for i, text in enumerate(operator_dumps()):
            report.sections.append((f"operator {i} at the failure", text))
    return report


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The session's cluster with the GPU node pool Ready.

    Its files (component logs, kubeconfig, certificates) go to a temporary
    directory that is deleted after a clean session and kept (path printed)
    when a test failed or a component died.
    """
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-e2e-"))
    clean = False
    try:
        with provide_cluster(workdir) as provided:
            yield provided
            # A component that died during the session fails the teardown loudly.
            provided.check_alive()
        clean = request.session.testsfailed == 0
    finally:
        if clean:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            _report(request, f"e2e cluster files kept in {workdir} (logs in {workdir / 'logs'})")


def _report(request: pytest.FixtureRequest, line: str) -> None:
    """Write past pytest's output capture, so the line is seen."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
    else:
        print(line)


@pytest.fixture(scope="session")
def api_client(cluster: Cluster) -> Iterator[client.ApiClient]:
    with cluster.api_client() as api:
        yield api


@pytest.fixture
def namespace(api_client: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted afterwards."""
    test_name = request.node.name.removeprefix("test_").lower()
    prefix = "e2e-" + re.sub(r"[^a-z0-9]+", "-", test_name)[:40].strip("-")
    name = create_namespace(api_client, prefix)
    yield name
    delete_namespace(api_client, name)
