"""Run the e2e test cluster for manual use, in the background.

    .venv/bin/python -m perf.cluster up       # start (or report it is already up)
    .venv/bin/python -m perf.cluster status   # components, API readiness, nodes
    .venv/bin/python -m perf.cluster down     # stop every process it started

The cluster is the one the e2e tests use (local control plane + KWOK GPU node
pool from tests/e2e/gpu-nodes.yaml); its files live in .cluster/ in the repo.
Pods get loopback IPs from a /16 in 127.64.0.0/10 that no other live cluster
holds (127.64.0.0/16 when free), so simulated engines of a manual cluster and
of a test session never collide; `status` shows which.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from perf.runs import REPO

from harness import start_local_cluster, stop_from_state
from harness.health import client_tls, probe
from harness.k8s import node_ready
from harness.kubeconfig import api_client_for
from harness.process import process_matches

STATE_DIR = REPO / ".cluster"
STATE_FILE = STATE_DIR / "state.json"


State = dict[str, Any]  # the control plane's state file (ControlPlane.state())


def _read_state() -> State | None:
    if not STATE_FILE.exists():
        return None
    state: State = json.loads(STATE_FILE.read_text())
    return state


def _dead_components(state: State) -> list[str]:
    return [
        c["name"] for c in state["components"] if not process_matches(c["pid"], c["executable"])
    ]


def _export_line(state: State) -> str:
    return f"export KUBECONFIG={state['kubeconfig']}"


def up() -> int:
    state = _read_state()
    if state is not None:
        dead = _dead_components(state)
        if not dead:
            print(f"already up ({state['server']})", file=sys.stderr)
            print(_export_line(state))
            return 0
        print(f"stale cluster state ({', '.join(dead)} not running): cleaning up", file=sys.stderr)
        _down(state)
    started = time.monotonic()
    cluster = start_local_cluster(STATE_DIR, owned=False)
    plane = cluster.control_plane
    assert plane is not None
    plane.save_state(STATE_FILE)
    print(
        f"up in {time.monotonic() - started:.1f}s: {len(cluster.pool.node_names())} KWOK nodes, "
        f"pod IPs from {plane.pod_network}, logs in {plane.logs_dir}",
        file=sys.stderr,
    )
    print(_export_line(plane.state()))
    return 0


def _down(state: State) -> list[str]:
    stopped = stop_from_state(state)
    STATE_FILE.unlink(missing_ok=True)
    for entry in STATE_DIR.iterdir():
        if entry.name != "logs":
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    return stopped


def down() -> int:
    state = _read_state()
    if state is None:
        print("not up (no .cluster/state.json)", file=sys.stderr)
        return 0
    stopped = _down(state)
    print(f"stopped: {', '.join(stopped) or 'nothing was running'}", file=sys.stderr)
    return 0


def status() -> int:
    state = _read_state()
    if state is None:
        print("down")
        return 1
    for component in state["components"]:
        alive = process_matches(component["pid"], component["executable"])
        print(f"{component['name']:<25} pid {component['pid']:<8} {'running' if alive else 'DEAD'}")
    pki = STATE_DIR / "pki"
    code, body = probe(
        f"{state['server']}/readyz",
        client_tls(pki / "ca.crt", pki / "admin.crt", pki / "admin.key"),
    )
    print(f"kube-apiserver /readyz: {code} {body.strip()[:80]}")
    if code != 200:
        return 1
    with api_client_for(Path(state["kubeconfig"])) as api:
        nodes = client.CoreV1Api(api).list_node().items
        ready = [n for n in nodes if node_ready(n)]
    print(f"nodes: {len(ready)}/{len(nodes)} Ready, pod IPs from {state.get('pod_network')}")
    print(_export_line(state))
    return 0 if not _dead_components(state) else 1


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    command = parser.parse_args().command
    return {"up": up, "down": down, "status": status}[command]()


if __name__ == "__main__":
    sys.exit(main())
