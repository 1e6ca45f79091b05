"""The process node itself: pods on it really run, as a kubelet runs them.

No vLLM here: the image ``openmodel.test/host`` is the host's /usr (sh, python3), so each
test starts in about a second. What the real-engine tests rely on is checked directly:
env from a Secret and the downward API, an emptyDir mount, the pod's own address,
readiness that follows the probe both ways, restart with the exit code and log tail in
lastState, a missing Secret reported as the kubelet reports it, and deletion that
signals the process and waits for it. And what a pod of the operator's image needs
(the gateway's): configMap, secret and ServiceAccount (``kube-api-access-*``) volumes as
files, and the API server at the ``kubernetes`` Service's address from inside the pod.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from harness import Cluster, NotYet, describe_namespace, wait_for
from harness.process_nodes import HOST_IMAGE, OPERATOR_IMAGE

pytestmark = pytest.mark.cluster


def host_pod(name: str, script: str, **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A10G"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 10,
            "containers": [
                {
                    "name": "main",
                    "image": HOST_IMAGE,
                    "command": ["sh", "-c", script],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "volumeMounts": [{"name": "srv", "mountPath": "/srv"}],
                    **container,
                }
            ],
            "volumes": [{"name": "srv", "emptyDir": {}}],
        },
    }


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


@pytest.fixture(autouse=True)
def _process_nodes(cluster: Cluster) -> None:
    cluster.require_process_nodes()


def pod_status(core: client.CoreV1Api, namespace: str, name: str) -> client.V1PodStatus:
    return core.read_namespaced_pod(name, namespace).status


def ready(status: client.V1PodStatus) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])


def test_env_mounts_and_address_as_in_a_pod(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "tok"}, "stringData": {"token": "s3cret"}}
    )
    script = (
        'echo "$TOKEN $MY_IP $(MY_NAME)" > /srv/env.txt && '
        "exec python3 -m http.server 8080 --bind 0.0.0.0 --directory /srv"
    )
    env = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "tok", "key": "token"}}},
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    probe = {"httpGet": {"path": "/env.txt", "port": "http"}, "periodSeconds": 1}
    core.create_namespaced_pod(namespace, host_pod("web", script, env=env, readinessProbe=probe))

    def serving() -> client.V1PodStatus | NotYet:
        s = pod_status(core, namespace, "web")
        return s if ready(s) else NotYet(s.phase)

    status = wait_for(serving, 30, lambda: describe_namespace(api_client, namespace))
    assert status.pod_ip.startswith("198.18.")
    code, body = get(f"http://{status.pod_ip}:8080/env.txt")
    # $TOKEN and $MY_IP come from the process env; $(MY_NAME) in the command is the
    # kubelet's own expansion, done before the shell sees the script.
    assert code == 200 and body == f"s3cret {status.pod_ip} web\n", body
    assert status.container_statuses[0].container_id.startswith("process://")


def test_readiness_follows_the_probe_both_ways(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    script = "touch /srv/alive && exec python3 -m http.server 8080 --bind 0.0.0.0 --directory /srv"
    probe = {
        "httpGet": {"path": "/ready", "port": "http"},
        "periodSeconds": 1,
        "failureThreshold": 1,
    }
    exec_probe = {"exec": {"command": ["test", "-e", "/srv/alive"]}, "periodSeconds": 1}
    core.create_namespaced_pod(
        namespace, host_pod("flip", script, readinessProbe=probe, livenessProbe=exec_probe)
    )

    def running() -> client.V1PodStatus | NotYet:
        s = pod_status(core, namespace, "flip")
        return s if s.phase == "Running" and s.pod_ip else NotYet(s.phase)

    status = wait_for(running, 30, lambda: describe_namespace(api_client, namespace))
    assert not ready(status)
    # /proc/PID/root is the container's view of the filesystem: its /srv is the emptyDir
    # once the mounts are made, which the script's /srv/alive shows.
    pid = int(status.container_statuses[0].container_id.removeprefix("process://"))
    srv = Path(f"/proc/{pid}/root/srv")
    wait_for(lambda: (srv / "alive").exists() or NotYet("no /srv/alive"), 10, "the mounts")
    ready_file = srv / "ready"
    ready_file.touch()
    wait_for(
        lambda: ready(pod_status(core, namespace, "flip")) or NotYet("not ready"),
        20,
        "Ready after the probe passes",
    )
    ready_file.unlink()
    wait_for(
        lambda: not ready(pod_status(core, namespace, "flip")) or NotYet("still ready"),
        20,
        "not Ready once the probe fails",
    )
    # The exec liveness probe (test -e /srv/alive, in the container's namespaces) held.
    assert pod_status(core, namespace, "flip").container_statuses[0].restart_count == 0


def test_exit_restarts_with_code_and_log_tail(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_pod(
        namespace,
        host_pod(
            "crash",
            "echo starting; echo 'fatal: no such thing' >&2; exit 3",
            terminationMessagePolicy="FallbackToLogsOnError",
        ),
    )

    def restarted() -> Any:
        s = pod_status(core, namespace, "crash").container_statuses
        return (s and s[0].restart_count >= 2 and s[0]) or NotYet(s)

    cs = wait_for(restarted, 60, lambda: describe_namespace(api_client, namespace))
    assert cs.last_state.terminated.exit_code == 3
    assert cs.last_state.terminated.message.splitlines()[-1] == "fatal: no such thing"
    assert cs.state.waiting is None or cs.state.waiting.reason == "CrashLoopBackOff"


def test_missing_secret_is_a_config_error(api_client: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(api_client)
    env = [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    core.create_namespaced_pod(namespace, host_pod("nosecret", "sleep 60", env=env))

    def waiting() -> Any:
        s = pod_status(core, namespace, "nosecret").container_statuses
        w = s and s[0].state.waiting
        return w if w and w.reason == "CreateContainerConfigError" else NotYet(s)

    w = wait_for(waiting, 30, lambda: describe_namespace(api_client, namespace))
    assert w.message == 'secret "absent" not found'


def test_deletion_signals_the_process_and_waits_for_it(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    # On SIGTERM it takes 2 s to exit: the pod must stay until then, then go.
    script = "trap 'sleep 2; exit 0' TERM; while true; do sleep 0.2; done"
    core.create_namespaced_pod(namespace, host_pod("graceful", script))

    def running() -> Any:
        s = pod_status(core, namespace, "graceful")
        cs = s.container_statuses
        return (cs and cs[0].container_id and cs[0]) or NotYet(s.phase)

    cs = wait_for(running, 30, lambda: describe_namespace(api_client, namespace))
    pid = int(cs.container_id.removeprefix("process://"))
    core.delete_namespaced_pod("graceful", namespace)

    def gone() -> bool | NotYet:
        names = [p.metadata.name for p in core.list_namespaced_pod(namespace).items]
        return ("graceful" not in names and not Path(f"/proc/{pid}").exists()) or NotYet(names)

    wait_for(gone, 20, "the pod and its process to be gone")


def serving_pod(
    api_client: client.ApiClient, namespace: str, name: str, **pod: Any
) -> client.V1PodStatus:
    """Create pod `name` of host_pod's shape with `pod` over its spec and container;
    its status once Ready."""
    core = client.CoreV1Api(api_client)
    body = host_pod(name, pod.pop("script", "sleep 60"), **pod.pop("container", {}))
    body["spec"] |= pod
    core.create_namespaced_pod(namespace, body)

    def serving() -> client.V1PodStatus | NotYet:
        s = pod_status(core, namespace, name)
        return s if ready(s) else NotYet(s.container_statuses)

    return wait_for(serving, 60, lambda: describe_namespace(api_client, namespace))


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
READY_ON_FILE = {"httpGet": {"path": "/done", "port": "http"}, "periodSeconds": 1}


def test_token_ca_namespace_configmap_and_secret_files_as_a_kubelet_writes_them(
    api_client: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "app"}, "data": {"config.yaml": "a: 1\n", "x": "y"}}
    )
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}}
    )
    script = (
        f"cp {SERVICE_ACCOUNT_DIR}/token {SERVICE_ACCOUNT_DIR}/ca.crt "
        f"{SERVICE_ACCOUNT_DIR}/namespace /etc/app/config.yaml /etc/creds/pw /srv/ && "
        "ls /etc/app > /srv/app-files && touch /srv/done && "
        "exec python3 -m http.server 8080 --bind 0.0.0.0 --directory /srv"
    )
    mounts = [
        {"name": "srv", "mountPath": "/srv"},
        {"name": "app", "mountPath": "/etc/app", "readOnly": True},
        {"name": "creds", "mountPath": "/etc/creds"},
    ]
    only_config = [{"key": "config.yaml", "path": "config.yaml"}]
    password_as_pw = [{"key": "password", "path": "pw"}]
    volumes = [
        {"name": "srv", "emptyDir": {}},
        {"name": "app", "configMap": {"name": "app", "items": only_config}},
        {"name": "creds", "secret": {"secretName": "creds", "items": password_as_pw}},
    ]
    status = serving_pod(
        api_client,
        namespace,
        "reader",
        script=script,
        container={"volumeMounts": mounts, "readinessProbe": READY_ON_FILE},
        volumes=volumes,
        serviceAccountName="reader",
        automountServiceAccountToken=True,
    )
    pod = core.read_namespaced_pod("reader", namespace)
    # The ServiceAccount admission plugin made the volume; the node wrote its files.
    projected = [v for v in pod.spec.volumes if v.name.startswith("kube-api-access-")]
    assert len(projected) == 1, [v.name for v in pod.spec.volumes]

    def fetch(name: str) -> str:
        code, body = get(f"http://{status.pod_ip}:8080/{name}")
        assert code == 200, (name, code)
        return body

    assert fetch("namespace") == namespace
    assert fetch("config.yaml") == "a: 1\n" and fetch("pw") == "s3cret"
    assert fetch("app-files") == "config.yaml\n"  # items: only the key named
    ca = Path(api_client.configuration.ssl_ca_cert).read_text()
    assert fetch("ca.crt") == ca  # kube-root-ca.crt, published by the controller-manager
    token = fetch("token")
    review = client.AuthenticationV1Api(api_client).create_token_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    )
    assert review.status.authenticated, review.status
    assert review.status.user.username == f"system:serviceaccount:{namespace}:reader"
    # A bound token: the pod it was made for is in its claims.
    assert review.status.user.extra["authentication.kubernetes.io/pod-name"] == ["reader"]


IN_CLUSTER_CLIENT = """
import functools, http.server, json, os
from kubernetes import client, config
config.load_incluster_config()
api = client.ApiClient()
review = client.AuthenticationV1Api(api).create_self_subject_review(
    {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
try:
    client.CoreV1Api(api).list_namespaced_secret("kube-system")
    secrets = 200
except client.ApiException as e:
    secrets = e.status
with open("/srv/done", "w") as out:
    json.dump({"user": review.status.user_info.username, "secrets": secrets,
               "server": api.configuration.host}, out)
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory="/srv")
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), handler).serve_forever()
"""


def test_a_pod_of_the_operator_image_reaches_the_api_server_at_the_service_address(
    api_client: client.ApiClient, namespace: str
) -> None:
    """The kubernetes client's in-cluster config (KUBERNETES_SERVICE_HOST/PORT, the
    mounted token and CA) against the real API server through the kubernetes Service."""
    core = client.CoreV1Api(api_client)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "probe"}})
    status = serving_pod(
        api_client,
        namespace,
        "incluster",
        container={
            "image": f"{OPERATOR_IMAGE}:0.1.0",
            "command": ["python", "-c", IN_CLUSTER_CLIENT],
            "readinessProbe": READY_ON_FILE,
        },
        serviceAccountName="probe",
        automountServiceAccountToken=True,
    )
    code, body = get(f"http://{status.pod_ip}:8080/done")
    assert code == 200, code
    seen = json.loads(body)
    assert seen == {
        "user": f"system:serviceaccount:{namespace}:probe",
        "secrets": 403,  # a real answer of the authorizer: this account may not
        "server": "https://10.0.0.1:443",
    }, seen


def test_pre_stop_hook_runs_before_the_stop_signal(
    api_client: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(api_client)
    script = "trap 'date +%s.%N > /out/term; exit 0' TERM; while true; do sleep 0.1; done"
    hook = {"preStop": {"exec": {"command": ["sh", "-c", "sleep 1; date +%s.%N > /out/hook"]}}}
    serving_pod(
        api_client,
        namespace,
        "hooked",
        script=script,
        container={
            "lifecycle": hook,
            "volumeMounts": [{"name": "out", "mountPath": "/out"}],
            "readinessProbe": {"exec": {"command": ["true"]}, "periodSeconds": 1},
        },
        volumes=[{"name": "out", "hostPath": {"path": str(tmp_path)}}],
    )
    core.delete_namespaced_pod("hooked", namespace)
    wait_for(
        lambda: (tmp_path / "term").exists() or NotYet(sorted(p.name for p in tmp_path.iterdir())),
        20,
        "the stop signal",
    )
    # The hook ran in the container (its /out), and the signal came after it ended.
    assert float((tmp_path / "hook").read_text()) < float((tmp_path / "term").read_text())
