"""A real Kubernetes control plane as local processes: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (which plays every node).

    with ControlPlane.start(workdir) as cp:
        subprocess.run([cp.bin_dir / "kubectl", "--kubeconfig", cp.kubeconfig, "get", "ns"])

Each component logs to ``<workdir>/logs/<name>.log``. A component that fails
to start or dies raises ComponentError naming it, with its last log lines.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from . import binaries
from .certs import Pki, create_pki
from .health import client_tls, self_signed_tls, wait_healthy
from .kubeconfig import write_cert_kubeconfig
from .launcher import DEFAULT_START_TIMEOUT, START_TIMEOUT, Launch, launch
from .nodepool import KWOK_ANNOTATION
from .podnet import PodNetworkLease, lease_pod_network
from .process import Component, process_matches, stop_detached

SERVICE_CIDR = "10.0.0.0/24"
DEFAULT_POD_NETWORK = ipaddress.IPv4Network("127.64.0.0/16")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KWOK_DEFAULT_NODE_IP = "127.63.255.254"
ETCD_DIR_PREFIX = "openmodel-etcd-"
ETCD_PID_FILE = "etcd.pid"
ORPHAN_AGE_SECONDS = 600


class ControlPlane:
    """A running local control plane; use ``ControlPlane.start``."""

    def __init__(
        self, workdir: Path, bin_dir: Path, *, owned: bool, pod_network: ipaddress.IPv4Network
    ) -> None:
        self.workdir = workdir
        self.bin_dir = bin_dir
        self.owned = owned
        self.logs_dir = workdir / "logs"
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.components: dict[str, Component] = {}
        self.ports: dict[str, list[int]] = {}
        self.launches: dict[str, Launch] = {}
        self.server = ""
        self.pki: Pki | None = None
        self.etcd_data_dir: Path | None = None
        self.startup_seconds: dict[str, float] = {}
        self.preferred_pod_network = pod_network
        self.pod_network_lease: PodNetworkLease | None = None

    # -- lifecycle -------------------------------------------------------

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        bin_dir: Path | None = None,
        owned: bool = True,
        pod_network: ipaddress.IPv4Network = DEFAULT_POD_NETWORK,
    ) -> Self:
        """Start every component and wait until each reports healthy.

        ``owned=False`` lets the processes outlive this Python process (for
        ``python -m perf.cluster up``); stop them later with ``stop_from_state``.
        Pod IPs come from ``pod_network`` or, when another live cluster holds
        it, the next free network of its size (``self.pod_network``).
        """
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        binaries_dir = bin_dir or binaries.require_bin_dir()
        plane = cls(workdir, binaries_dir, owned=owned, pod_network=pod_network)
        try:
            plane._start_all()
        except BaseException:
            plane.stop()
            raise
        return plane

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every component (SIGTERM, then SIGKILL) and delete etcd's data."""
        running = list(reversed(self.components.values()))
        for component in running:
            component.terminate()
        for component in running:
            component.stop()
        if self.etcd_data_dir is not None:
            shutil.rmtree(self.etcd_data_dir, ignore_errors=True)
        if self.pod_network_lease is not None:
            self.pod_network_lease.release()

    @property
    def pod_network(self) -> ipaddress.IPv4Network:
        """The pod network this control plane's nodes must take their podCIDRs from."""
        if self.pod_network_lease is None:
            raise RuntimeError("control plane not started")
        return self.pod_network_lease.network

    def check_alive(self) -> None:
        """Raise ComponentError for the first component that has exited."""
        for component in self.components.values():
            component.raise_if_exited()

    # -- startup ---------------------------------------------------------

    def _start_all(self) -> None:
        started = time.monotonic()
        self.pod_network_lease = lease_pod_network(self.preferred_pod_network)
        self.pki = create_pki(self.workdir / "pki")
        scratch = _scratch_dir()
        _remove_orphaned_etcd_dirs(scratch)
        self.etcd_data_dir = Path(tempfile.mkdtemp(prefix=ETCD_DIR_PREFIX, dir=scratch))
        self._launch([self._etcd()])
        (self.etcd_data_dir / ETCD_PID_FILE).write_text(str(self.components["etcd"].pid))
        self.startup_seconds["etcd"] = time.monotonic() - started
        self._launch([self._apiserver()])
        self.startup_seconds["kube-apiserver"] = time.monotonic() - started
        self.server = f"https://127.0.0.1:{self.ports['kube-apiserver'][0]}"
        pki = self.pki
        write_cert_kubeconfig(
            self.kubeconfig,
            self.server,
            pki.ca.cert,
            pki.admin.cert,
            pki.admin.key,
            "openmodel-admin",
        )
        kubeconfigs = self.workdir / "kubeconfigs"
        write_cert_kubeconfig(
            kubeconfigs / "controller-manager.kubeconfig",
            self.server,
            pki.ca.cert,
            pki.controller_manager.cert,
            pki.controller_manager.key,
            "system:kube-controller-manager",
        )
        write_cert_kubeconfig(
            kubeconfigs / "scheduler.kubeconfig",
            self.server,
            pki.ca.cert,
            pki.scheduler.cert,
            pki.scheduler.key,
            "system:kube-scheduler",
        )
        self._launch([self._controller_manager(), self._scheduler(), self._kwok()])
        self.startup_seconds["all components"] = time.monotonic() - started

    def _launch(self, launches: Sequence[Launch]) -> None:
        def track(component: Component) -> None:
            self.components[component.name] = component

        started = launch(launches, self.logs_dir, owned=self.owned, on_start=track)
        self.ports |= {name: item.ports for name, item in started.items()}
        self.launches |= {item.name: item for item in launches}

    # -- restarts ----------------------------------------------------------

    def stop_component(self, name: str, *, kill: bool = False) -> None:
        """Stop one component (SIGTERM with its grace period, or SIGKILL at once); its
        ports, data directory (etcd) and certificates stay for ``start_component``."""
        self.components[name].stop(timeout=0.0 if kill else None)

    def start_component(self, name: str) -> float:
        """Start a stopped component again with the same command line, on the same ports,
        and wait until it is healthy; returns the seconds that took."""
        item, ports = self.launches[name], self.ports[name]
        if self.components[name].returncode() is None:
            raise RuntimeError(f"{name} is still running (pid {self.components[name].pid})")
        started = time.monotonic()
        component = Component(
            name, item.argv(ports), self.logs_dir / f"{name}.log", stop_timeout=item.stop_timeout
        )
        component.start(owned=self.owned, pass_fds=item.pass_fds, env=item.env)
        self.components[name] = component
        if name == "etcd" and self.etcd_data_dir is not None:
            (self.etcd_data_dir / ETCD_PID_FILE).write_text(str(component.pid))
        deadline = started + START_TIMEOUT.get(name, DEFAULT_START_TIMEOUT)
        wait_healthy(component, item.health_url(ports), item.tls, deadline)
        return time.monotonic() - started

    def restart_component(self, name: str, *, kill: bool = False) -> float:
        """``stop_component`` then ``start_component``; seconds until healthy again."""
        self.stop_component(name, kill=kill)
        return self.start_component(name)

    def _exe(self, name: str) -> str:
        return str(self.bin_dir / name)

    def _etcd(self) -> Launch:
        if self.etcd_data_dir is None:
            raise RuntimeError("etcd's data directory is made before etcd starts")
        data_dir = self.etcd_data_dir / "data"

        def argv(ports: list[int]) -> list[str]:
            client_url, peer_url = (f"http://127.0.0.1:{p}" for p in ports)
            return [
                self._exe("etcd"),
                "--name=default",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=default={peer_url}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ]

        return Launch("etcd", 2, argv, lambda p: f"http://127.0.0.1:{p[0]}/health", None)

    def _apiserver(self) -> Launch:
        pki = self._pki()
        etcd = f"http://127.0.0.1:{self.ports['etcd'][0]}"

        def argv(ports: list[int]) -> list[str]:
            return [
                self._exe("kube-apiserver"),
                f"--etcd-servers={etcd}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports[0]}",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki.apiserver.cert}",
                f"--tls-private-key-file={pki.apiserver.key}",
                f"--client-ca-file={pki.ca.cert}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.service_account_public}",
                f"--service-account-signing-key-file={pki.service_account_private}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                f"--cert-dir={self.workdir / 'apiserver'}",
                "--profiling=false",
            ]

        tls = client_tls(pki.ca.cert, pki.admin.cert, pki.admin.key)
        return Launch("kube-apiserver", 1, argv, lambda p: f"https://127.0.0.1:{p[0]}/readyz", tls)

    def _controller_manager(self) -> Launch:
        pki = self._pki()
        kubeconfig = self.workdir / "kubeconfigs" / "controller-manager.kubeconfig"

        def argv(ports: list[int]) -> list[str]:
            return [
                self._exe("kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports[0]}",
                f"--cert-dir={self.workdir / 'controller-manager'}",
                "--leader-elect=false",
                "--controllers=*",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.service_account_private}",
                f"--root-ca-file={pki.ca.cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--cluster-signing-cert-file={pki.ca.cert}",
                f"--cluster-signing-key-file={pki.ca.key}",
                "--profiling=false",
            ]

        return Launch(
            "kube-controller-manager",
            1,
            argv,
            lambda p: f"https://127.0.0.1:{p[0]}/healthz",
            self_signed_tls(),
        )

    def _scheduler(self) -> Launch:
        kubeconfig = self.workdir / "kubeconfigs" / "scheduler.kubeconfig"

        def argv(ports: list[int]) -> list[str]:
            return [
                self._exe("kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={ports[0]}",
                f"--cert-dir={self.workdir / 'scheduler'}",
                "--leader-elect=false",
                "--profiling=false",
            ]

        return Launch(
            "kube-scheduler",
            1,
            argv,
            lambda p: f"https://127.0.0.1:{p[0]}/healthz",
            self_signed_tls(),
        )

    def _kwok(self) -> Launch:
        lease = self.pod_network_lease
        if lease is None:
            raise RuntimeError("pod network not leased yet")
        return kwok_launch(self.bin_dir, self.kubeconfig, lease)

    def _pki(self) -> Pki:
        if self.pki is None:
            raise RuntimeError("PKI not created yet")
        return self.pki

    # -- use -------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane as the admin."""
        return subprocess.run(
            [self._exe("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def state(self) -> dict[str, Any]:
        """What ``stop_from_state`` needs to stop detached components later."""
        return {
            "kubeconfig": str(self.kubeconfig),
            "server": self.server,
            "logs_dir": str(self.logs_dir),
            "etcd_data_dir": str(self.etcd_data_dir),
            "pod_network": str(self.pod_network),
            "components": [
                {"name": c.name, "pid": c.pid, "executable": c.argv[0]}
                for c in self.components.values()
            ],
        }

    def save_state(self, path: Path) -> None:
        path.write_text(json.dumps(self.state(), indent=2))


def kwok_launch(bin_dir: Path, kubeconfig: Path, lease: PodNetworkLease) -> Launch:
    """kwok managing only nodes annotated kwok.x-k8s.io/node=fake (usable against any
    cluster). It inherits the pod network lease, so the lease lives as long as kwok."""
    selector = f"{KWOK_ANNOTATION[0]}={KWOK_ANNOTATION[1]}"
    # Pods on a KWOK node without spec.podCIDR: the lease's last /24 (the pool's
    # nodes take /24s from the start).
    fallback_cidr = list(lease.network.subnets(new_prefix=24))[-1]

    def argv(ports: list[int]) -> list[str]:
        return [
            str(bin_dir / "kwok"),
            f"--kubeconfig={kubeconfig}",
            f"--config={bin_dir / 'kwok-stage' / 'fast'}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={selector}",
            f"--cidr={fallback_cidr}",
            f"--node-ip={KWOK_DEFAULT_NODE_IP}",
            f"--server-address=127.0.0.1:{ports[0]}",
            # The stage set's node heartbeat writes status only every ~10 min and relies
            # on node Leases for liveness; without leases (the default, 0) the
            # node-lifecycle controller marks every node NotReady ~50 s after start.
            "--node-lease-duration-seconds=40",
        ]

    return Launch("kwok", 1, argv, lambda p: f"http://127.0.0.1:{p[0]}/healthz", None, (lease.fd,))


def stop_from_state(state: dict[str, Any]) -> list[str]:
    """Stop the components recorded by ``ControlPlane.save_state``; names of those stopped."""
    stopped = []
    for entry in reversed(state["components"]):
        if stop_detached(entry["pid"], entry["executable"]):
            stopped.append(entry["name"])
    if state.get("etcd_data_dir"):
        shutil.rmtree(state["etcd_data_dir"], ignore_errors=True)
    return stopped


def _scratch_dir() -> Path:
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 1 << 30:
        return shm
    return Path(tempfile.gettempdir())


def _remove_orphaned_etcd_dirs(scratch: Path) -> None:
    """Delete etcd data left by a control plane whose owner was SIGKILLed (no
    teardown ran): its etcd is gone, or it never recorded one long ago."""
    for directory in scratch.glob(f"{ETCD_DIR_PREFIX}*"):
        pid_file = directory / ETCD_PID_FILE
        try:
            orphaned = not process_matches(int(pid_file.read_text()), "etcd", by_name=True)
        except (FileNotFoundError, ValueError):
            orphaned = time.time() - directory.stat().st_mtime > ORPHAN_AGE_SECONDS
        if orphaned:
            shutil.rmtree(directory, ignore_errors=True)
