"""The LeaderWorkerSet controller (sigs.k8s.io/lws, built by ``hack/build-lws.sh``) as
a host process against the test cluster, installed the way its release installs it.

``start_lws`` applies the release's CRDs (server-side: they are too large for
client-side apply's annotation), writes the controller's configuration (no leader
election, no in-cluster certificate management: the harness gives it a serving
certificate for 127.0.0.1 made by ``certs.create_loopback_serving_pair``), starts it,
and registers the release's admission webhooks (its ``config/webhook`` manifests with
the release's patches: the pod webhooks only for pods of a LeaderWorkerSet) with a
``url:`` on the loopback instead of a Service: the API server reaches the host process
directly, no kube-proxy needed. ``LwsController.stop`` removes the webhook
configurations first (their failurePolicy is Fail: left behind, they would refuse every
LeaderWorkerSet and its pods), then the process; the CRDs stay or go as asked.
"""

from __future__ import annotations

import base64
import copy
import json
import subprocess
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import binaries
from .certs import create_loopback_serving_pair
from .ports import free_port
from .process import Component, read_tail
from .wait import NotYet, wait_for

REPO_ROOT = Path(__file__).resolve().parents[3]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-lws.sh"
CRD_FILES = (
    "leaderworkerset.x-k8s.io_leaderworkersets.yaml",
    "disaggregatedset.x-k8s.io_disaggregatedsets.yaml",
)
CRD_NAMES = (
    "leaderworkersets.leaderworkerset.x-k8s.io",
    "disaggregatedsets.disaggregatedset.x-k8s.io",
)
WEBHOOK_PREFIX = "openmodel-e2e-lws-"


def build() -> Path:
    """hack/build-lws.sh's bin directory (built once; cached afterwards)."""
    built = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=1800, check=False
    )
    if built.returncode != 0:
        raise RuntimeError(f"hack/build-lws.sh failed:\n{built.stderr[-4000:]}")
    return Path(built.stdout.strip().splitlines()[-1])


def _kubectl(kubeconfig: Path, *args: str) -> str:
    exe = binaries.require_bin_dir() / "kubectl"
    result = subprocess.run(
        [str(exe), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def install_crds(api: client.ApiClient, kubeconfig: Path, bin_dir: Path) -> None:
    files = [f"-f={bin_dir / 'crds' / name}" for name in CRD_FILES]
    _kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", *files)
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool | NotYet:
        states = {}
        for name in CRD_NAMES:
            crd = ext.read_custom_resource_definition(name)
            conditions = (crd.status.conditions if crd.status else None) or []
            states[name] = {c.type: c.status for c in conditions}
        return all(s.get("Established") == "True" for s in states.values()) or NotYet(states)

    wait_for(established, 30, "the LeaderWorkerSet CRDs to be Established")


def delete_crds(api: client.ApiClient) -> None:
    ext = client.ApiextensionsV1Api(api)
    for name in CRD_NAMES:
        try:
            ext.delete_custom_resource_definition(name)
        except ApiException as error:
            if error.status != 404:
                raise

    def gone() -> bool | NotYet:
        left = [n for n in CRD_NAMES if _crd_exists(ext, n)]
        return not left or NotYet(left)

    wait_for(gone, 60, "the LeaderWorkerSet CRDs to be deleted")


def _crd_exists(ext: client.ApiextensionsV1Api, name: str) -> bool:
    try:
        ext.read_custom_resource_definition(name)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


def _apply_patch(document: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    """The release's JSON patches (`op: replace` of one webhook) on its manifest."""
    out = copy.deepcopy(document)
    for op in patch:
        assert op["op"] == "replace", op
        parts = op["path"].strip("/").split("/")
        target: Any = out
        for part in parts[:-1]:
            target = target[int(part)] if isinstance(target, list) else target[part]
        last = parts[-1]
        if isinstance(target, list):
            target[int(last)] = copy.deepcopy(op["value"])
        else:
            target[last] = copy.deepcopy(op["value"])
    return out


def webhook_configurations(bin_dir: Path, port: int, ca_bundle: str) -> list[dict[str, Any]]:
    """The release's webhook configurations, patched as its kustomization does, each
    webhook's Service replaced by a url on 127.0.0.1:`port`."""
    crds = bin_dir / "crds"
    documents = [d for d in yaml.safe_load_all((crds / "manifests.yaml").read_text()) if d]
    patches = {
        "MutatingWebhookConfiguration": yaml.safe_load((crds / "mutating-patch.yaml").read_text()),
        "ValidatingWebhookConfiguration": yaml.safe_load(
            (crds / "validating-patch.yaml").read_text()
        ),
    }
    out = []
    for document in documents:
        patched = _apply_patch(document, patches[document["kind"]])
        patched["metadata"] = {"name": WEBHOOK_PREFIX + document["metadata"]["name"]}
        for hook in patched["webhooks"]:
            path = hook["clientConfig"]["service"]["path"]
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": ca_bundle}
            hook["timeoutSeconds"] = 10
        out.append(patched)
    return out


@dataclass
class LwsController:
    api: client.ApiClient
    kubeconfig: Path
    component: Component
    webhooks: list[dict[str, Any]]
    health_port: int
    keep_crds: bool = True
    bin_dir: Path = field(default_factory=Path)
    stopped: bool = False

    def log_tail(self, lines: int = 60) -> str:
        return f"--- lws-controller ({self.component.log_path}) ---\n" + read_tail(
            self.component.log_path, lines
        )

    def check_alive(self) -> None:
        if not self.stopped:
            self.component.raise_if_exited()

    def stop(self) -> None:
        """Webhooks, process, CRDs (unless kept); a second call does nothing."""
        if self.stopped:
            return
        self.stopped = True
        for hook in self.webhooks:
            kind = hook["kind"].lower()
            _kubectl(
                self.kubeconfig, "delete", "--ignore-not-found", kind, hook["metadata"]["name"]
            )
        self.component.stop()
        if not self.keep_crds:
            delete_crds(self.api)


def _register_webhooks(kubeconfig: Path, hooks: list[dict[str, Any]], workdir: Path) -> None:
    path = workdir / "lws-webhooks.yaml"
    path.write_text(yaml.safe_dump_all(hooks))
    _kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", f"-f={path}")


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start_lws(
    api: client.ApiClient, kubeconfig: Path, workdir: Path, *, keep_crds: bool = True
) -> LwsController:
    """Build (cached), install the CRDs, start the controller, register its webhooks;
    returns once it is ready and the API server admits a LeaderWorkerSet through them."""
    bin_dir = build()
    install_crds(api, kubeconfig, bin_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    ca, pair = create_loopback_serving_pair(workdir / "certs", "lws-webhook")
    cert_dir = workdir / "serving-certs"
    cert_dir.mkdir(exist_ok=True)
    (cert_dir / "tls.crt").write_bytes(pair.cert.read_bytes())
    (cert_dir / "tls.key").write_bytes(pair.key.read_bytes())
    webhook_port, health_port = free_port(), free_port()
    config = {
        "apiVersion": "config.lws.x-k8s.io/v1alpha1",
        "kind": "Configuration",
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "webhook": {"port": webhook_port, "host": "127.0.0.1", "certDir": str(cert_dir)},
        "health": {"healthProbeBindAddress": f"127.0.0.1:{health_port}"},
        "metrics": {"bindAddress": "0"},
    }
    config_path = workdir / "lws-config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    argv = [
        str(bin_dir / "lws-controller"),
        f"--config={config_path}",
        f"--kubeconfig={kubeconfig}",
        "--zap-log-level=info",
    ]
    component = Component("lws-controller", argv, workdir / "logs" / "lws-controller.log")
    component.start()
    bundle = base64.b64encode(ca.read_bytes()).decode()
    hooks = webhook_configurations(bin_dir, webhook_port, bundle)
    controller = LwsController(api, kubeconfig, component, hooks, health_port, keep_crds, bin_dir)

    def ready() -> bool | NotYet:
        component.raise_if_exited()
        return _healthy(health_port) or NotYet("readyz not answering")

    wait_for(ready, 60, controller.log_tail)
    _register_webhooks(kubeconfig, hooks, workdir)
    _wait_admitted(api, controller)
    return controller


def _wait_admitted(api: client.ApiClient, controller: LwsController) -> None:
    """A dry-run create of a LeaderWorkerSet passes the webhooks (they answer, with the
    certificate the API server was given)."""
    custom = client.CustomObjectsApi(api)
    probe = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "admission-probe", "namespace": "default"},
        "spec": {
            "leaderWorkerTemplate": {
                "size": 2,
                "workerTemplate": {"spec": {"containers": [{"name": "c", "image": "x"}]}},
            }
        },
    }
    last: list[str] = []

    def admitted() -> bool | NotYet:
        controller.check_alive()
        try:
            custom.create_namespaced_custom_object(
                "leaderworkerset.x-k8s.io", "v1", "default", "leaderworkersets", probe,
                dry_run="All",
            )  # fmt: skip
        except ApiException as error:
            last[:] = [f"{error.status}: {json.loads(error.body or '{}').get('message')}"]
            return NotYet(last[0])
        return True

    wait_for(admitted, 30, lambda: f"{last} {controller.log_tail()}")
