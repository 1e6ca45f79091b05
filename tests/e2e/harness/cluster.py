"""One cluster for a test session, whatever provides it.

Modes (``choose_mode``):
- ``existing``: the cluster in ``$KUBECONFIG`` (unless OPENMODEL_TEST_CLUSTER=local);
- ``kind``: a kind cluster via pytest-kind(-ng), when ``docker info`` succeeds;
- ``local``: ``ControlPlane`` processes (the default on machines without Docker).
OPENMODEL_TEST_CLUSTER=local|kind|existing forces a mode.

In every mode the GPU node pool from ``gpu-nodes.yaml`` is created as KWOK nodes.
The local control plane runs its own kwok; for kind/existing clusters a local
kwok process is started against them (OPENMODEL_KWOK=external skips that when
the cluster already runs kwok for the annotation kwok.x-k8s.io/node=fake).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kubernetes import client

from . import binaries
from .controlplane import ControlPlane, kwok_launch
from .kubeconfig import api_client_for
from .launcher import launch
from .nodepool import (
    DEFAULT_POOL_FILE,
    NodePool,
    apply_node_pool,
    delete_node_pool,
    load_node_pool,
    wait_nodes_ready,
)
from .podnet import lease_pod_network
from .process import Component
from .process_nodes import process_node_launch, process_nodes_unavailable

Mode = Literal["local", "kind", "existing"]
MODES: tuple[Mode, ...] = ("local", "kind", "existing")
KIND_CLUSTER_NAME = "openmodel-e2e"


@dataclass
class Cluster:
    """What a test needs to reach the cluster."""

    mode: Mode
    kubeconfig: Path
    pool: NodePool
    workdir: Path
    control_plane: ControlPlane | None = None
    extra_components: list[Component] = field(default_factory=list)
    # Why the pool has no process nodes (None when it has them, or was not asked to).
    no_process_nodes: str | None = None

    def require_process_nodes(self) -> None:
        """Fail the calling test when pods cannot really run in this cluster."""
        if not self.pool.process_nodes():
            why = self.no_process_nodes or (
                f"mode {self.mode!r}: only the local control plane has process nodes"
            )
            raise AssertionError(f"this test needs process nodes, and there are none: {why}")

    def api_client(self) -> client.ApiClient:
        """A new kubernetes-client ApiClient for the admin kubeconfig."""
        return api_client_for(self.kubeconfig)

    def stop(self) -> None:
        """Stop what this harness started (local mode: the whole control plane)."""
        if self.control_plane is not None:
            self.control_plane.stop()

    def check_alive(self) -> None:
        """Raise ComponentError if a process of this harness has died."""
        if self.control_plane is not None:
            self.control_plane.check_alive()
        for component in self.extra_components:
            component.raise_if_exited()


def docker_engine_running() -> bool:
    """``docker info`` succeeds (the client alone is not enough)."""
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def choose_mode(environ: dict[str, str] | None = None) -> Mode:
    env = dict(os.environ if environ is None else environ)
    forced = env.get("OPENMODEL_TEST_CLUSTER", "")
    if forced:
        if forced not in MODES:
            raise ValueError(f"OPENMODEL_TEST_CLUSTER={forced!r}: expected one of {MODES}")
        return forced
    if env.get("KUBECONFIG"):
        return "existing"
    if docker_engine_running():
        return "kind"
    return "local"


@contextlib.contextmanager
def provide_cluster(
    workdir: Path, *, mode: Mode | None = None, pool_file: Path = DEFAULT_POOL_FILE
) -> Iterator[Cluster]:
    """Provide a cluster with the node pool Ready; tear everything down on exit."""
    mode = mode or choose_mode()
    pool = load_node_pool(pool_file)
    workdir.mkdir(parents=True, exist_ok=True)
    if mode == "local":
        cluster = start_local_cluster(workdir, pool_file=pool_file)
        try:
            yield cluster
        finally:
            cluster.stop()
    elif mode == "kind":
        with _kind_cluster(workdir) as kubeconfig:
            yield from _with_external_pool(mode, kubeconfig, pool, workdir)
    else:
        kubeconfig = _kubeconfig_from_env()
        yield from _with_external_pool(mode, kubeconfig, pool, workdir)


def start_local_cluster(
    workdir: Path, *, owned: bool = True, pool_file: Path = DEFAULT_POOL_FILE
) -> Cluster:
    """Start the local control plane and its node pool (Ready) on a free pod network."""
    pool = load_node_pool(pool_file)
    why_not = process_nodes_unavailable()
    if why_not is not None:
        # The tests that need process nodes fail, quoting this.
        pool = pool.without_process_nodes()
    plane = ControlPlane.start(workdir, owned=owned, pod_network=pool.pod_network)
    cluster = Cluster(
        "local",
        plane.kubeconfig,
        pool.with_pod_network(plane.pod_network),
        workdir,
        control_plane=plane,
        no_process_nodes=why_not,
    )
    try:
        _create_pool(cluster)
    except BaseException:
        plane.stop()
        raise
    return cluster


def _create_pool(cluster: Cluster) -> None:
    with cluster.api_client() as api:
        names = apply_node_pool(api, cluster.pool)
        plane = cluster.control_plane
        if plane is not None and cluster.pool.process_nodes():
            launch(
                [process_node_launch(cluster.kubeconfig, cluster.pool, cluster.workdir / "nodes")],
                plane.logs_dir,
                owned=plane.owned,
                on_start=lambda c: plane.components.__setitem__(c.name, c),
            )
        wait_nodes_ready(api, names)


def _with_external_pool(
    mode: Mode, kubeconfig: Path, pool: NodePool, workdir: Path
) -> Iterator[Cluster]:
    lease = lease_pod_network(pool.pod_network)
    # Process nodes run pods on this machine; only the local control plane has them.
    pool = pool.without_process_nodes()
    cluster = Cluster(
        mode,
        kubeconfig,
        pool.with_pod_network(lease.network),
        workdir,
        no_process_nodes="only the local control plane has process nodes",
    )
    try:
        if os.environ.get("OPENMODEL_KWOK") != "external":
            launch(
                [kwok_launch(binaries.require_bin_dir(), kubeconfig, lease)],
                workdir / "logs",
                owned=True,
                on_start=cluster.extra_components.append,
            )
        _create_pool(cluster)
        yield cluster
    finally:
        with contextlib.suppress(Exception), cluster.api_client() as api:
            delete_node_pool(api, cluster.pool)
        for component in cluster.extra_components:
            component.stop()
        lease.release()


def _kubeconfig_from_env() -> Path:
    value = os.environ.get("KUBECONFIG", "")
    if not value:
        raise RuntimeError("mode 'existing' needs KUBECONFIG pointing at the cluster")
    return Path(value.split(os.pathsep)[0])


@contextlib.contextmanager
def _kind_cluster(workdir: Path) -> Iterator[Path]:
    try:
        from pytest_kind import KindCluster  # lazy: only this mode needs it
    except ImportError as error:
        raise RuntimeError(
            "Docker is running, so the e2e tests want a kind cluster, but pytest-kind is not "
            "installed: `.venv/bin/pip install -e '.[kind]'` (pytest-kind-ng), or set "
            "OPENMODEL_TEST_CLUSTER=local to use the local control plane"
        ) from error
    kind: Any = KindCluster(KIND_CLUSTER_NAME, kubeconfig=workdir / "kind.kubeconfig")
    kind.create()
    try:
        yield Path(kind.kubeconfig_path)
    finally:
        if os.environ.get("OPENMODEL_KEEP_KIND") != "1":
            kind.delete()
