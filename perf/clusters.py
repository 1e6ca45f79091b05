"""The cluster a chaos or soak script runs on: by default a fresh audited control plane of
its own (`harness.resilience.own_cluster`), or one already up (`--kubeconfig`, as the e2e
suite's smoke test does on the session's cluster: no audit log there, so the writes a
script counts from it read as none)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client

from harness.audit import AuditLog
from harness.kubeconfig import api_client_for
from harness.operator import install_crd
from harness.resilience import own_cluster


@dataclass(frozen=True)
class ScriptCluster:
    api: client.ApiClient
    kubeconfig: Path  # the admin's
    audit: AuditLog
    start_seconds: float
    own: bool  # a control plane of the script's own (False: --kubeconfig's)

    def describe(self) -> str:
        if self.own:
            return f"control plane, nodes and CRD up in {self.start_seconds:.1f}s"
        return f"on the cluster of {self.kubeconfig} (no audit log), CRD installed"


@contextlib.contextmanager
def script_cluster(workdir: Path, kubeconfig: Path | None) -> Iterator[ScriptCluster]:
    if kubeconfig is None:
        with own_cluster(workdir) as own:
            yield ScriptCluster(own.api, own.kubeconfig, own.audit, own.start_seconds, True)
        return
    started = time.monotonic()
    api = api_client_for(kubeconfig)
    api.user_agent = "openmodel-resilience"
    try:
        install_crd(api)
        audit = AuditLog(workdir / "no-audit.log")
        yield ScriptCluster(api, kubeconfig, audit, time.monotonic() - started, False)
    finally:
        api.close()  # type: ignore[no-untyped-call]  # unannotated in the client
