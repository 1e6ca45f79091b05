"""A slow, throttling API server: twenty ModelDeployments still converge, each with one
Deployment and one Service, and a throttled request does not come back before its
Retry-After.

An operator of its own serves e2e-slow-* namespaces through harness/slow_proxy.py:
300 ms before every request, and 10 % of requests (seeded) answered 429 with
`Retry-After: 1` and kube-apiserver's Status body. The same twenty ModelDeployments are
also run against the session's operator, straight to the API server, for comparison.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterator

import md_fleet
import pytest
import urllib3
from kubernetes import client

from harness import Cluster, create_namespace, delete_namespace
from harness.slow_proxy import Recorded, SlowProxy, retries
from openmodel_fixtures import SLOW_API_NAMESPACE_PREFIX, OperatorProcess, start_operator

pytestmark = pytest.mark.cluster

FLEET = 20
DELAY_SECONDS = 0.3
THROTTLE_SHARE = 0.1
RETRY_AFTER_SECONDS = 1
# The retry must wait at least Retry-After after the 429 was sent; the 429 and the
# retry cross the loopback, so a few milliseconds of clock slack are the only leeway.
CLOCK_SLACK_SECONDS = 0.01
CONVERGE_TIMEOUT_SECONDS = 240
OPERATOR_AGENT = "OpenAPI-Generator/"  # the kubernetes client's User-Agent prefix
KOPF_AGENT = "kopf/"


@pytest.fixture(scope="module")
def slow_proxy(cluster: Cluster) -> Iterator[SlowProxy]:
    proxy = SlowProxy(
        cluster.kubeconfig,
        delay=DELAY_SECONDS,
        throttle_share=THROTTLE_SHARE,
        retry_after=RETRY_AFTER_SECONDS,
        seed=13,
    ).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def slow_operator(
    cluster: Cluster, crd: None, slow_proxy: SlowProxy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    workdir = tmp_path_factory.mktemp("slow-operator")
    kubeconfig = slow_proxy.write_kubeconfig(workdir / "through-proxy.kubeconfig")
    op = start_operator(
        kubeconfig,
        workdir,
        extra_env={"OPENMODEL_NAMESPACES": f"{SLOW_API_NAMESPACE_PREFIX}-*"},
        name="operator-slow",
    )
    yield op
    op.stop()
    sys.stderr.write(f"slow operator log: {op.log_path}\n")


@pytest.fixture
def slow_namespace(api_client: client.ApiClient) -> Iterator[str]:
    name = create_namespace(api_client, SLOW_API_NAMESPACE_PREFIX)
    yield name
    delete_namespace(api_client, name)


def test_twenty_converge_straight_to_the_api_server(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess
) -> None:
    """The baseline for the slow run: the session's operator, no proxy."""
    names = md_fleet.create_fleet(api_client, namespace, FLEET)
    seconds = md_fleet.wait_fleet_converged(
        api_client, namespace, names, CONVERGE_TIMEOUT_SECONDS, operator.log_tail
    )
    md_fleet.assert_one_child_each(api_client, namespace, names)
    print(f"\n[slow-api] direct: {FLEET} ModelDeployments converged in {seconds:.1f} s")


def _in_namespace(records: list[Recorded], namespace: str, agent: str) -> list[Recorded]:
    scope = f"/namespaces/{namespace}/"
    return [r for r in records if scope in r.path and r.user_agent.startswith(agent)]


def _gaps_text(gaps: list[float]) -> str:
    if not gaps:
        return "none"
    return (
        f"n={len(gaps)} min={min(gaps):.3f}s median={statistics.median(gaps):.3f}s "
        f"max={max(gaps):.3f}s"
    )


def test_twenty_converge_through_a_slow_throttling_api(
    api_client: client.ApiClient,
    slow_namespace: str,
    slow_operator: OperatorProcess,
    slow_proxy: SlowProxy,
) -> None:
    namespace = slow_namespace
    before = len(slow_proxy.records)
    names = md_fleet.create_fleet(api_client, namespace, FLEET)
    seconds = md_fleet.wait_fleet_converged(
        api_client, namespace, names, CONVERGE_TIMEOUT_SECONDS, slow_operator.log_tail
    )
    md_fleet.assert_one_child_each(api_client, namespace, names)
    assert slow_operator.alive(), slow_operator.log_tail()
    with urllib3.PoolManager() as http:
        assert http.request("GET", slow_operator.liveness_url, timeout=5).status == 200

    records = slow_proxy.records[before:]
    throttled = [r for r in records if r.throttled]
    # The proxy really throttled this run (10 % of a few hundred requests).
    assert len(throttled) >= 5, f"{len(throttled)} of {len(records)} requests got 429"

    report = [
        f"[slow-api] through the proxy: {FLEET} converged in {seconds:.1f} s; "
        f"{len(records)} requests, {len(throttled)} answered 429"
    ]
    too_soon: dict[str, list[str]] = {}
    for label, agent in (("operator's client", OPERATOR_AGENT), ("kopf", KOPF_AGENT)):
        mine = _in_namespace(records, namespace, agent)
        pairs, abandoned = retries(mine)
        gaps = [p.gap for p in pairs]
        report.append(
            f"[slow-api]   {label}: {len(mine)} requests in the namespace, "
            f"{sum(r.throttled for r in mine)} throttled, came back: {_gaps_text(gaps)}, "
            f"never repeated: {len(abandoned)}"
        )
        for method in sorted({r.method for r in mine}):
            of_method = [p.gap for p in pairs if p.throttled.method == method]
            hit = sum(r.throttled for r in mine if r.method == method)
            report.append(
                f"[slow-api]     {method}: {hit} throttled, came back: {_gaps_text(of_method)}"
            )
        too_soon[label] = [
            f"{p.throttled.method} {p.throttled.path} again after {p.gap:.3f}s"
            for p in pairs
            if p.gap < RETRY_AFTER_SECONDS - CLOCK_SLACK_SECONDS
        ]
    print("\n" + "\n".join(report))
    assert too_soon == {"operator's client": [], "kopf": []}, (
        f"throttled requests came back before Retry-After ({RETRY_AFTER_SECONDS} s): {too_soon}"
    )
