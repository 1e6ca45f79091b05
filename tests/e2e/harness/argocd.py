"""A real Argo CD as local processes against the session's control plane.

``hack/build-argocd.sh`` builds it (one binary dispatching on its name, kustomize, Argo
CD's CRDs and ``git-verify-wrapper.sh`` in one versioned bin directory); the directory is
computed from the version variables at the script's top, as ``binaries.bin_dir`` does for
the control plane, so finding it never starts a build. ``OPENMODEL_ARGOCD_BIN_DIR``
overrides the location.

``start_argocd`` installs Argo CD's CRDs, the namespace ``argocd`` with the ConfigMaps and
Secret Argo CD's own install creates (then merges our ``argocd/argocd-cm.yaml`` into
``argocd-cm`` with exactly the command docs/gitops.md gives users), the ``default``
AppProject, and starts redis, the repo-server, the application controller and the API
server (for the ``argocd`` CLI), each in its own process group with its own log file,
with ``ARGOCD_FAKE_IN_CLUSTER=true`` and the cluster's admin kubeconfig: "in-cluster"
(https://kubernetes.default.svc) is then the session's control plane.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from . import binaries
from .k8s import as_object
from .launcher import Launch, launch
from .ports import free_port
from .process import Component, ComponentError, read_tail
from .wait import NotYet, wait_for

REPO_ROOT = binaries.REPO_ROOT
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-argocd.sh"
ARGOCD_CM_PATCH = REPO_ROOT / "argocd" / "argocd-cm.yaml"
NAMESPACE = "argocd"
IN_CLUSTER = "https://kubernetes.default.svc"
REQUIRED = (
    "argocd",
    "argocd-application-controller",
    "argocd-repo-server",
    "argocd-server",
    "kustomize",
    "git-verify-wrapper.sh",
)
GROUP, VERSION = "argoproj.io", "v1alpha1"
# The labels Argo CD's install puts on its config; its informers select on part-of.
PART_OF = {"app.kubernetes.io/part-of": "argocd"}
# Compare every application with Git at least this often, without jitter (Argo CD's
# defaults: 120 s and up to 60 s of jitter; a change of a tracked object and the refresh
# annotation trigger a comparison at once anyway). Argo CD's install hands these argocd-cm
# keys to the controller as environment variables; so does start_argocd.
RECONCILIATION = {"timeout.reconciliation": "10s", "timeout.reconciliation.jitter": "0s"}
RECONCILIATION_ENV = {
    "ARGOCD_RECONCILIATION_TIMEOUT": RECONCILIATION["timeout.reconciliation"],
    "ARGOCD_RECONCILIATION_JITTER": RECONCILIATION["timeout.reconciliation.jitter"],
}


class ArgoCDMissing(RuntimeError):
    """Argo CD has not been built (or not completely)."""


def _script_var(script: Path, var: str) -> str:
    match = re.search(rf"^{var}=(\S+)", script.read_text(), re.MULTILINE)
    if not match:
        raise RuntimeError(f"{script}: cannot find {var}=... to locate the bin directory")
    return match.group(1)


def bin_dir() -> Path:
    """The versioned bin directory of hack/build-argocd.sh (it may not exist yet)."""
    override = os.environ.get("OPENMODEL_ARGOCD_BIN_DIR")
    if override:
        return Path(override)
    argocd = _script_var(BUILD_SCRIPT, "ARGOCD_VERSION")
    kustomize = _script_var(BUILD_SCRIPT, "KUSTOMIZE_VERSION")
    cache = Path(os.environ.get("OPENMODEL_CACHE", Path.home() / ".cache" / "openmodel"))
    return cache / "bin" / f"argocd-{argocd}-kustomize-{kustomize}"


def require_bin_dir() -> Path:
    """The bin directory, or an error saying what is missing and how to build it."""
    directory = bin_dir()
    missing = [name for name in REQUIRED if not os.access(directory / name, os.X_OK)]
    if not (directory / "crds").is_dir():
        missing.append("crds/")
    if missing:
        raise ArgoCDMissing(
            f"Argo CD missing in {directory}: {', '.join(missing)}. Build it with: "
            f"bash {BUILD_SCRIPT.relative_to(REPO_ROOT)} (a cold build takes about 12 "
            "minutes on 2 cores; later runs reuse the cache)"
        )
    return directory


def version() -> str:
    return _script_var(BUILD_SCRIPT, "ARGOCD_VERSION")


@dataclass
class ArgoCD:
    """A running Argo CD: its processes, the API server address, and CLI access."""

    bin_dir: Path
    kubeconfig: Path
    workdir: Path
    env: dict[str, str]
    server: str = ""
    components: list[Component] = field(default_factory=list)

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the ``argocd`` CLI against the API server (auth is disabled there)."""
        argv = [
            str(self.bin_dir / "argocd"),
            *args,
            "--server",
            self.server,
            "--plaintext",
            "--config",
            str(self.workdir / "cli-config"),
        ]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=self.env, check=False
        )

    def resource_tree(self, app: str) -> dict[str, Any]:
        """The Application's resource tree from the API server: Argo CD v3 keeps each
        resource's health there (not in the Application's status, by default)."""
        url = (
            f"http://{self.server}/api/v1/applications/{app}/resource-tree?appNamespace={NAMESPACE}"
        )
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def resource_health(self, app: str, kind: str, name: str) -> tuple[str, str]:
        """(status, message) of one resource of the Application, ('', '') when absent,
        or when the API server does not know the Application yet: it reads Applications
        from its own informer, a moment behind their create, and answers 403 for one it
        cannot find (it does not tell a missing Application from a forbidden one)."""
        try:
            nodes = self.resource_tree(app).get("nodes") or []
        except urllib.error.HTTPError as error:
            if error.code in (403, 404):
                return "", ""
            raise
        for node in nodes:
            if node.get("kind") == kind and node.get("name") == name:
                health = node.get("health") or {}
                return health.get("status", ""), health.get("message", "")
        return "", ""

    def admin(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``argocd admin ...``: offline commands, no server needed."""
        return subprocess.run(
            [str(self.bin_dir / "argocd"), "admin", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            check=False,
        )

    def check_alive(self) -> None:
        for component in self.components:
            component.raise_if_exited()

    def logs(self, lines: int = 40) -> str:
        """The tail of every component's log, for failure messages."""
        return "\n".join(
            f"--- {c.name} ({c.log_path}) ---\n{read_tail(c.log_path, lines)}"
            for c in self.components
        )

    def stop(self) -> None:
        for component in reversed(self.components):
            component.terminate()
        for component in reversed(self.components):
            component.stop()


def argocd_env(bin_directory: Path, kubeconfig: Path, workdir: Path) -> dict[str, str]:
    tmp = workdir / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    # The repo-server runs git, git-verify-wrapper.sh, kustomize (ours) and helm (the
    # control plane's build).
    path = f"{bin_directory}:{binaries.bin_dir()}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return {
        **os.environ,
        "PATH": path,
        "KUBECONFIG": str(kubeconfig),
        "ARGOCD_FAKE_IN_CLUSTER": "true",
        "ARGOCD_GPG_ENABLED": "false",
        "TMPDIR": str(tmp),  # the repo-server's checkouts and helm homes: removed with workdir
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def _kubectl(kubeconfig: Path, *args: str) -> str:
    exe = binaries.require_bin_dir() / "kubectl"
    result = subprocess.run(
        [str(exe), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
    return result.stdout


def install_crds(api: client.ApiClient, kubeconfig: Path, crd_dir: Path) -> None:
    files = sorted(str(p) for p in crd_dir.glob("*-crd.yaml"))
    # The Application CRD is too large for client-side apply's annotation.
    _kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", *(f"-f={f}" for f in files))
    ext = client.ApiextensionsV1Api(api)

    def established() -> bool | NotYet:
        states = {}
        for name in ("applications", "appprojects", "applicationsets"):
            crd = ext.read_custom_resource_definition(f"{name}.{GROUP}")
            conditions = (crd.status.conditions if crd.status else None) or []
            states[name] = {c.type: c.status for c in conditions}
        done = all(s.get("Established") == "True" for s in states.values())
        return done or NotYet(states)

    wait_for(established, 30, "Argo CD's CRDs to be Established")


def _create_or_replace(create: Any, replace: Any, name: str, body: dict[str, Any]) -> None:
    try:
        create(NAMESPACE, body)
    except ApiException as error:
        if error.status != 409:
            raise
        replace(name, NAMESPACE, body)


def install_config(api: client.ApiClient, kubeconfig: Path) -> None:
    """The namespace, Argo CD's ConfigMaps and Secret as its install creates them, our
    health check merged in as docs/gitops.md says, and the ``default`` AppProject."""
    core = client.CoreV1Api(api)
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    except ApiException as error:
        if error.status != 409:
            raise
    for name, data in (
        ("argocd-cm", dict(RECONCILIATION)),
        ("argocd-rbac-cm", {}),
        ("argocd-cmd-params-cm", {}),
        ("argocd-gpg-keys-cm", {}),
        ("argocd-ssh-known-hosts-cm", {}),
        ("argocd-tls-certs-cm", {}),
    ):
        body = {
            "metadata": {"name": name, "labels": {"app.kubernetes.io/name": name, **PART_OF}},
            "data": data,
        }
        _create_or_replace(
            core.create_namespaced_config_map, core.replace_namespaced_config_map, name, body
        )
    secret = {"metadata": {"name": "argocd-secret", "labels": dict(PART_OF)}, "type": "Opaque"}
    _create_or_replace(
        core.create_namespaced_secret, core.replace_namespaced_secret, "argocd-secret", secret
    )
    # Exactly the documented command.
    _kubectl(
        kubeconfig,
        "-n",
        NAMESPACE,
        "patch",
        "configmap",
        "argocd-cm",
        "--type",
        "merge",
        "--patch-file",
        str(ARGOCD_CM_PATCH),
    )
    project = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AppProject",
        "metadata": {"name": "default", "namespace": NAMESPACE},
        "spec": {
            "sourceRepos": ["*"],
            "destinations": [{"server": "*", "namespace": "*"}],
            "clusterResourceWhitelist": [{"group": "*", "kind": "*"}],
        },
    }
    custom = client.CustomObjectsApi(api)
    try:
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "appprojects", project)
    except ApiException as error:
        if error.status != 409:
            raise


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(workdir: Path, env: dict[str, str]) -> tuple[Component, int]:
    for _ in range(3):
        port = free_port()
        argv = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
        ]  # fmt: skip
        redis = Component("redis", argv, workdir / "logs" / "redis.log")
        redis.start(env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and redis.returncode() is None:
            if _redis_answers(port):
                return redis, port
            time.sleep(0.05)
        lost_race = "Address already in use" in redis.log_since_start()
        redis.stop()
        if not lost_race:
            raise ComponentError("redis", "did not answer PING", redis.log_path)
    raise ComponentError("redis", "no free port after 3 attempts", workdir / "logs" / "redis.log")


def start_argocd(api: client.ApiClient, kubeconfig: Path, workdir: Path) -> ArgoCD:
    """Install Argo CD's CRDs and config, start its processes; stopped by ``ArgoCD.stop``
    (or, should the caller die, by the kernel: the processes are owned)."""
    directory = require_bin_dir()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    env = argocd_env(directory, kubeconfig, workdir)
    install_crds(api, kubeconfig, directory / "crds")
    install_config(api, kubeconfig)
    argocd = ArgoCD(directory, kubeconfig, workdir, env)
    try:
        redis, redis_port = start_redis(workdir, env)
        argocd.components.append(redis)
        redis_addr = f"127.0.0.1:{redis_port}"
        common = ["--loglevel", "info", "--redis", redis_addr]
        k8s = ["--namespace", NAMESPACE]

        def repo_server(ports: list[int]) -> list[str]:
            return [
                str(directory / "argocd-repo-server"),
                *common,
                "--address", "127.0.0.1",
                "--port", str(ports[0]),
                "--metrics-address", "127.0.0.1",
                "--metrics-port", str(ports[1]),
                "--disable-tls",
                "--client-ca-path", "",
            ]  # fmt: skip

        started = launch(
            [
                Launch(
                    "argocd-repo-server",
                    2,
                    repo_server,
                    lambda p: f"http://127.0.0.1:{p[1]}/healthz",
                    env=env,
                )
            ],
            logs,
            owned=True,
            on_start=argocd.components.append,
        )
        repo_addr = f"127.0.0.1:{started['argocd-repo-server'].ports[0]}"

        def controller(ports: list[int]) -> list[str]:
            return [
                str(directory / "argocd-application-controller"),
                *common,
                *k8s,
                "--repo-server", repo_addr,
                "--repo-server-plaintext",
                "--metrics-port", str(ports[0]),
            ]  # fmt: skip

        def server(ports: list[int]) -> list[str]:
            return [
                str(directory / "argocd-server"),
                *common,
                *k8s,
                "--repo-server", repo_addr,
                "--repo-server-plaintext",
                "--insecure",
                "--disable-auth",
                "--address", "127.0.0.1",
                "--port", str(ports[0]),
                "--metrics-port", str(ports[1]),
            ]  # fmt: skip

        started = launch(
            [
                Launch(
                    "argocd-application-controller",
                    1,
                    controller,
                    lambda p: f"http://127.0.0.1:{p[0]}/healthz",
                    env={**env, **RECONCILIATION_ENV},
                ),
                Launch(
                    "argocd-server",
                    2,
                    server,
                    lambda p: f"http://127.0.0.1:{p[0]}/healthz",
                    env=env,
                ),
            ],
            logs,
            owned=True,
            on_start=argocd.components.append,
        )
        argocd.server = f"127.0.0.1:{started['argocd-server'].ports[0]}"
    except BaseException:
        argocd.stop()
        raise
    return argocd


# -- Applications ----------------------------------------------------------------------


def application(
    name: str,
    repo_url: str,
    path: str,
    namespace: str,
    *,
    automated: bool = True,
    finalizer: bool = True,
    sync_options: Sequence[str] = (),
    extra_source: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An Application of one folder of a Git repository, as a user would write it."""
    spec: dict[str, Any] = {
        "project": "default",
        "source": {"repoURL": repo_url, "targetRevision": "HEAD", "path": path},
        "destination": {"server": IN_CLUSTER, "namespace": namespace},
        "syncPolicy": {},
    }
    spec["source"].update(extra_source or {})
    if automated:
        spec["syncPolicy"]["automated"] = {"prune": True, "selfHeal": True}
    if sync_options:
        spec["syncPolicy"]["syncOptions"] = list(sync_options)
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if finalizer:
        # Deleting the Application then deletes what it deployed (cascade).
        metadata["finalizers"] = ["resources-finalizer.argocd.argoproj.io"]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Application",
        "metadata": metadata,
        "spec": spec,
    }


def create_application(api: client.ApiClient, body: dict[str, Any]) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    return as_object(
        custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "applications", body)
    )


def get_application(api: client.ApiClient, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(api)
    return as_object(
        custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "applications", name)
    )


def hard_refresh(api: client.ApiClient, name: str) -> None:
    """What `argocd app get --hard-refresh` does: the annotation the controller acts on."""
    custom = client.CustomObjectsApi(api)
    patch = {"metadata": {"annotations": {"argocd.argoproj.io/refresh": "hard"}}}
    custom.patch_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "applications", name, patch)


def delete_application(api: client.ApiClient, name: str, *, cascade: bool) -> None:
    """Delete an Application; ``cascade=False`` drops Argo CD's finalizer first, so what
    it deployed stays."""
    custom = client.CustomObjectsApi(api)
    try:
        if not cascade:
            custom.patch_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, "applications", name, {"metadata": {"finalizers": []}}
            )
        custom.delete_namespaced_custom_object(GROUP, VERSION, NAMESPACE, "applications", name)
    except ApiException as error:
        if error.status != 404:
            raise


def application_gone(api: client.ApiClient, name: str) -> bool | NotYet:
    try:
        app = get_application(api, name)
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return NotYet(f"still there: finalizers {app['metadata'].get('finalizers')}")


def summary(app: dict[str, Any]) -> str:
    """One screen about an Application, for failure messages."""
    status = app.get("status") or {}
    resources = [
        f"  {r.get('kind')}/{r.get('name')}: {r.get('status')} "
        f"{(r.get('health') or {}).get('status', '')} {(r.get('health') or {}).get('message', '')}"
        for r in status.get("resources") or []
    ]
    op = status.get("operationState") or {}
    return "\n".join(
        [
            f"Application {app['metadata']['name']}: sync {status.get('sync', {}).get('status')} "
            f"health {status.get('health', {}).get('status')} "
            f"operation {op.get('phase')}: {op.get('message', '')}",
            f"conditions: {status.get('conditions')}",
            *resources,
        ]
    )


def git_repo(path: Path) -> str:
    """Make ``path`` a Git repository (with what is in it committed); its file:// URL."""
    _git(path, "init", "-q", "-b", "main")
    commit(path, "initial content")
    return f"file://{path}"


def commit(path: Path, message: str) -> str:
    _git(path, "add", "-A")
    _git(path, "commit", "-q", "--allow-empty", "-m", message)
    return _git(path, "rev-parse", "HEAD").strip()


def _git(path: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(path), "-c", "user.name=e2e", "-c", "user.email=e2e@openmodel.test",
         "-c", "commit.gpgsign=false", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed: {result.stderr}")
    return result.stdout


def write_yaml(path: Path, *docs: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
