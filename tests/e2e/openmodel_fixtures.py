"""Fixtures that install the CRD and run the operator and the gateway as real processes,
for the whole session (tests use their own namespaces); their logs are printed when a
test fails to start them. Imported by conftest.py.

The process helpers live in `harness.operator` (the benchmarks and chaos scripts of
`perf` use them too); the tests import them from here as well.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from kubernetes import client

from harness import Cluster
from harness.operator import (
    API_KEY_CRD_FILE,
    AUTOSCALER_POLL_SECONDS,
    CRD_FILE,
    EXAMPLES,
    EXTERNAL_MODEL_CRD_FILE,
    GROUP,
    PLURAL,
    REPO,
    SMALL_MODEL_SPEC,
    VERSION,
    ChildProcess,
    GatewayProcess,
    OperatorProcess,
    autoscaled_small_md,
    condition,
    create_md,
    get_md,
    grant_use,
    install_crd,
    load_example,
    operator_dumps,
    platform_config,
    revoke_use,
    start_gateway,
    start_operator,
)

__all__ = [
    "API_KEY_CRD_FILE",
    "AUTOSCALER_POLL_SECONDS",
    "CACHE_TEST_NAMESPACE_PREFIX",
    "CRD_FILE",
    "EXAMPLES",
    "EXTERNAL_MODEL_CRD_FILE",
    "EXTERNAL_MODEL_NAMESPACE_PREFIX",
    "GROUP",
    "HELM_RELEASE_NAMESPACE_PREFIX",
    "INFERENCE_EXTENSION_NAMESPACE_PREFIX",
    "MODEL_CONFIG_NAMESPACE_PREFIX",
    "PERF_NAMESPACE_PREFIX",
    "PLURAL",
    "REPO",
    "RESTRICTED_NAMESPACE_PREFIX",
    "SESSION_SCOPE",
    "SLOW_API_NAMESPACE_PREFIX",
    "SMALL_MODEL_SPEC",
    "VERSION",
    "WEIGHTS_NAMESPACE_PREFIX",
    "ChildProcess",
    "GatewayProcess",
    "OperatorProcess",
    "api_key_crd",
    "autoscaled_small_md",
    "condition",
    "crd",
    "create_md",
    "external_model_crd",
    "gateway",
    "get_md",
    "grant_use",
    "install_crd",
    "load_example",
    "operator",
    "operator_dumps",
    "platform_config",
    "revoke_use",
    "start_gateway",
    "start_operator",
]

SESSION_SCOPE = (
    "!e2e-rbac-*,!e2e-gwie-*,!e2e-hub-*,!e2e-slow-*,!e2e-cache-*,!e2e-perf-*,!e2e-helmmd-*,"
    "!e2e-cost-*,!e2e-weights-*,!e2e-xm-*"
)
RESTRICTED_NAMESPACE_PREFIX = "e2e-rbac"
# test_inference_pool_and_route.py runs its own operator (feature on) in e2e-gwie-* namespaces.
INFERENCE_EXTENSION_NAMESPACE_PREFIX = "e2e-gwie"
# test_model_config_sizing.py runs its own operator (HF_ENDPOINT = a local stand-in) in e2e-hub-*.
MODEL_CONFIG_NAMESPACE_PREFIX = "e2e-hub"
# test_cache_consistency.py runs a Reconciler in the test process in e2e-cache-* namespaces.
CACHE_TEST_NAMESPACE_PREFIX = "e2e-cache"
# test_slow_api.py runs its own operator (through a slow, throttling proxy) in e2e-slow-*.
SLOW_API_NAMESPACE_PREFIX = "e2e-slow"
# test_perf_smoke.py runs the perf scripts (their own operators) in e2e-perf-* namespaces.
PERF_NAMESPACE_PREFIX = "e2e-perf"
# test_helm_release.py: the chart's operator (a pod) serves e2e-helmmd-* namespaces.
HELM_RELEASE_NAMESPACE_PREFIX = "e2e-helmmd"
# test_weights_real.py runs its own operator (downloads from a local Hub stand-in) in e2e-weights-*.
WEIGHTS_NAMESPACE_PREFIX = "e2e-weights"
# test_external_models.py runs its own operator (its own gateway namespace) in e2e-xm-*.
EXTERNAL_MODEL_NAMESPACE_PREFIX = "e2e-xm"


@pytest.fixture(scope="session")
def crd(api_client: client.ApiClient) -> None:
    install_crd(api_client)


@pytest.fixture(scope="session")
def api_key_crd(api_client: client.ApiClient) -> None:
    """The APIKey CRD, which a gateway with authentication on watches."""
    install_crd(api_client, API_KEY_CRD_FILE)


@pytest.fixture(scope="session")
def external_model_crd(api_client: client.ApiClient) -> None:
    """The ExternalModel CRD, which the gateway and the operator watch."""
    install_crd(api_client, EXTERNAL_MODEL_CRD_FILE)


@pytest.fixture(scope="session")
def gateway(cluster: Cluster, crd: None, external_model_crd: None) -> Iterator[GatewayProcess]:
    gw = start_gateway(cluster.kubeconfig, cluster.workdir)
    yield gw
    gw.stop()
    sys.stderr.write(f"gateway log: {gw.log_path}\n")


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster, crd: None, external_model_crd: None, gateway: GatewayProcess
) -> Iterator[OperatorProcess]:
    # Namespaces named e2e-rbac-* belong to tests that run their own operator under a
    # restricted identity; the session's operator must not do their work for them.
    op = start_operator(
        cluster.kubeconfig,
        cluster.workdir,
        extra_env={"OPENMODEL_NAMESPACES": SESSION_SCOPE},
        demand_urls=[gateway.demand_url],
    )
    yield op
    op.stop()
    sys.stderr.write(f"operator log: {op.log_path}\n")
