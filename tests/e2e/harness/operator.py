"""The operator and the gateway as real processes, and the ModelDeployment objects the
e2e tests, benchmarks and chaos scripts create.

`start_operator` runs `python -m openmodel` (whatever `openmodel` package the child's
PYTHONPATH or the editable install gives: `perf.bench_reconcile --rev` runs an old one
this way) with the tests' platform config; `ChildProcess` stops it by process group.
"""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from .k8s import as_object
from .wait import NotYet, WaitTimeout, wait_for

REPO = Path(__file__).resolve().parents[3]
CRD_FILE = REPO / "crds" / "modeldeployment.yaml"
API_KEY_CRD_FILE = REPO / "crds" / "apikey.yaml"
EXTERNAL_MODEL_CRD_FILE = REPO / "crds" / "externalmodel.yaml"
EXAMPLES = REPO / "examples"
GROUP, VERSION, PLURAL = "openmodel.dev", "v1alpha1", "modeldeployments"
# The tests' platform config: a fast autoscaler poll, so the closed loop runs in seconds.
AUTOSCALER_POLL_SECONDS = 1.0
TEST_PLATFORM_CONFIG: dict[str, dict[str, Any]] = {
    "autoscaler": {"pollSeconds": AUTOSCALER_POLL_SECONDS, "scrapeTimeoutSeconds": 0.5},
    "adapters": {"pollSeconds": 1.0},
    # The session's gateway (see the `gateway` fixture) polls engines every 0.5 s; the
    # operator reads the gateway's held requests from its /demand URL (set at start; on
    # the gateway's metrics port).
    "gateway": {"queuePollSeconds": 0.5, "holdSeconds": 600},
    # Metering reads every engine's token counters; a test waits for one poll.
    "cost": {"pollSeconds": 1.0},
}


def install_crd(api: client.ApiClient, path: Path = CRD_FILE) -> None:
    body = yaml.safe_load(path.read_text())
    ext = client.ApiextensionsV1Api(api)
    try:
        existing = ext.read_custom_resource_definition(body["metadata"]["name"])
        body["metadata"]["resourceVersion"] = (
            existing.metadata.resource_version if existing.metadata else None
        )
        ext.replace_custom_resource_definition(body["metadata"]["name"], body)
    except ApiException as e:
        if e.status != 404:
            raise
        ext.create_custom_resource_definition(body)

    def established() -> bool | NotYet:
        crd = ext.read_custom_resource_definition(body["metadata"]["name"])
        conds = {c.type: c.status for c in (crd.status.conditions if crd.status else None) or []}
        return conds.get("Established") == "True" or NotYet(conds)

    wait_for(established, 30, f"the CRD {body['metadata']['name']} to be Established")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ChildProcess:
    """A test-started process in its own session, logging to `log_path`."""

    process: subprocess.Popen[bytes]
    log_path: Path
    # SIGTERM, then SIGKILL after this long.
    STOP_SECONDS = 15.0

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=self.STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    return subprocess.Popen(
        argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def wait_until_answering(child: ChildProcess, url: str, what: str) -> None:
    """Wait for `url` to answer 200; a child that exits fails at once with its log.
    On failure the child is stopped."""

    def answering() -> bool | NotYet:
        if not child.alive():
            code = child.process.returncode
            raise AssertionError(f"{what} exited with {code}:\n{child.log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError) as e:
            return NotYet(str(e))

    try:
        wait_for(answering, 60, lambda: f"{what} at {url}; log:\n{child.log_tail()}", interval=0.3)
    except BaseException:
        child.stop()
        raise


@dataclass
class OperatorProcess(ChildProcess):
    liveness_url: str = ""
    metrics_url: str = ""


# Every operator a test started, for the failure report's dump (conftest.py).
STARTED_OPERATORS: list[OperatorProcess] = []
DUMP_MARKER = "kopf blockers:"


def operator_dumps(timeout: float = 5.0) -> list[str]:
    """For a failed test: each running operator logs its asyncio tasks and kopf's blockers
    (SIGUSR2, `openmodel/kube/diagnostics.py`) and its threads' stacks (SIGUSR1); the
    dump and the log lines before it, per operator."""
    dumps = []
    for op in [o for o in STARTED_OPERATORS if o.alive()]:
        before = op.log_path.read_text(errors="replace").count(DUMP_MARKER)
        os.kill(op.process.pid, signal.SIGUSR2)
        os.kill(op.process.pid, signal.SIGUSR1)

        def dumped(o: OperatorProcess = op, n: int = before) -> bool | NotYet:
            text = o.log_path.read_text(errors="replace")
            return text.count(DUMP_MARKER) > n or NotYet("no dump in the log yet")

        # A stuck loop writes no dump; the threads' stacks (USR1) are in the tail anyway.
        with contextlib.suppress(WaitTimeout):
            wait_for(dumped, timeout, "the operator's dump", interval=0.2)
        dumps.append(f"{op.log_path} (pid {op.process.pid}):\n{op.log_tail(250)}")
    return dumps


def platform_config(demand_urls: list[str] | None = None) -> dict[str, Any]:
    config = copy.deepcopy(TEST_PLATFORM_CONFIG)
    if demand_urls:
        config["gateway"]["demandUrls"] = demand_urls
    return config


def start_operator(
    kubeconfig: Path,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    name: str = "operator",
    demand_urls: list[str] | None = None,
) -> OperatorProcess:
    port = free_port()
    log_path = workdir / f"{name}.log"
    config_path = workdir / f"{name}-config.yaml"
    config_path.write_text(yaml.safe_dump(platform_config(demand_urls)))
    metrics_port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "OPENMODEL_LIVENESS": f"http://127.0.0.1:{port}/healthz",
        "OPENMODEL_METRICS_PORT": str(metrics_port),
        "OPENMODEL_CONFIG": str(config_path),
        "OPENMODEL_RESYNC_SECONDS": "10",
        "PYTHONUNBUFFERED": "1",
        **(extra_env or {}),
    }
    process = spawn([sys.executable, "-m", "openmodel"], env, log_path)
    op = OperatorProcess(
        process, log_path, f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{metrics_port}"
    )
    STARTED_OPERATORS.append(op)
    wait_until_answering(op, op.liveness_url, "operator")
    return op


@dataclass
class GatewayProcess(ChildProcess):
    url: str = ""  # the OpenAI API (http:// or https://)
    metrics_url: str = ""  # /metrics and /demand: the metrics port, always http://
    # It drains requests in flight for up to 60 s on SIGTERM (gateway/server.py).
    STOP_SECONDS = 70.0

    @property
    def demand_url(self) -> str:
        return f"{self.metrics_url}/demand"


# The session's gateway serves the routing, streaming and scaling tests with auth off,
# said explicitly: they are about where requests go, and a test about the door starts a
# gateway of its own in enforce or audit mode (tests/e2e/test_gateway_auth.py).
AUTH_OFF: dict[str, Any] = {"mode": "off"}


def grant_use(api: client.ApiClient, namespace: str, caller_ns: str, account: str) -> str:
    """A RoleBinding in `namespace` giving ServiceAccount `caller_ns/account` the verb `use`
    on ModelDeployments (openmodel-user's rule, as a Role of the test's own: the ClusterRole
    ships in manifests/, which the session does not install). Returns the Role's name,
    which the RoleBinding shares."""
    rbac = client.RbacAuthorizationV1Api(api)
    role = f"use-{caller_ns}-{account}"
    rules = [client.V1PolicyRule(api_groups=[GROUP], resources=[PLURAL], verbs=["use"])]
    rbac.create_namespaced_role(
        namespace, client.V1Role(metadata=client.V1ObjectMeta(name=role), rules=rules)
    )
    binding = client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name=role),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name=role),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name=account, namespace=caller_ns)],
    )
    rbac.create_namespaced_role_binding(namespace, binding)
    return role


def revoke_use(api: client.ApiClient, namespace: str, role: str) -> None:
    rbac = client.RbacAuthorizationV1Api(api)
    rbac.delete_namespaced_role_binding(role, namespace)
    rbac.delete_namespaced_role(role, namespace)


def start_gateway(
    kubeconfig: Path,
    workdir: Path,
    name: str = "gateway",
    auth: dict[str, Any] | None = None,
    tls: dict[str, str] | None = None,
    limits: dict[str, Any] | None = None,
    balancing: dict[str, Any] | None = None,
    workers: int | None = None,
) -> GatewayProcess:
    """`python -m openmodel.gateway` on 127.0.0.1, routing every namespace of the cluster
    (pods' IPs are reachable from the host: loopback for KWOK pods, the process nodes'
    veths for real engines). `auth`: the platform config's gateway.auth (default: off);
    `tls`: gateway.tls (serves https://); `limits`: gateway.limits (default: none);
    `balancing`: gateway.balancing (default: the platform's); `workers`: gateway.workers
    (default: one process)."""
    port, metrics_port = free_port(), free_port()
    log_path = workdir / f"{name}.log"
    config_path = workdir / f"{name}-config.yaml"
    config = platform_config()
    config["gateway"]["auth"] = auth if auth is not None else AUTH_OFF
    if tls is not None:
        config["gateway"]["tls"] = tls
    if limits is not None:
        config["gateway"]["limits"] = limits
    if balancing is not None:
        config["gateway"]["balancing"] = balancing
    if workers is not None:
        config["gateway"]["workers"] = workers
    config_path.write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "OPENMODEL_CONFIG": str(config_path),
        "PYTHONUNBUFFERED": "1",
    }
    argv = [sys.executable, "-m", "openmodel.gateway", "--host", "127.0.0.1", "--port", str(port),
            "--metrics-port", str(metrics_port)]  # fmt: skip
    scheme = "https" if tls is not None else "http"
    gw = GatewayProcess(
        spawn(argv, env, log_path),
        log_path,
        f"{scheme}://127.0.0.1:{port}",
        f"http://127.0.0.1:{metrics_port}",
    )
    wait_until_answering(gw, f"{gw.url}/readyz", "gateway")
    return gw


def load_example(name: str, namespace: str, **spec_overrides: Any) -> dict[str, Any]:
    body = yaml.safe_load((EXAMPLES / name).read_text())
    body = copy.deepcopy(body)
    body["metadata"]["namespace"] = namespace
    body["spec"].update(spec_overrides)
    return body  # type: ignore[no-any-return]


# The small model the autoscaling tests and scripts scale: Llama 3.1 8B, one H100 a pod.
SMALL_MODEL_SPEC: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "quantization": "none",
    "gpu": {"type": "nvidia-h100-80gb", "count": 1},
    "maxModelLen": 8192,
}


def autoscaled_small_md(namespace: str, name: str, **autoscaling: Any) -> dict[str, Any]:
    """The example turned into SMALL_MODEL_SPEC with `autoscaling` as given."""
    body = load_example(
        "llama70b-awq.yaml", namespace, **copy.deepcopy(SMALL_MODEL_SPEC), autoscaling=autoscaling
    )
    body["metadata"]["name"] = name
    return body


def create_md(api: client.ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    ns = body["metadata"]["namespace"]
    custom = client.CustomObjectsApi(api)
    return as_object(custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body))


def get_md(api: client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    return as_object(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))


def condition(md: dict[str, Any], type_: str) -> dict[str, Any]:
    """The ModelDeployment's condition of `type_`, or {} when it has none."""
    for c in (md.get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c  # type: ignore[no-any-return]
    return {}
