"""``python -m harness.process_node``: run the process nodes until SIGTERM.

    --kubeconfig FILE --root DIR --health-port P
    --node NAME=CIDR        (repeatable: a Node object of that name must exist)
    --image REF=DIR         (repeatable: DIR stands for the image's filesystem)
    --node-cpus N           (cores per node, CFS quota; default: the machine's divided
                             between the nodes)
    --no-network-policy     (pods run unconfined, as without an enforcing network plugin)

/healthz on 127.0.0.1:P answers 200 once every node has posted Ready. On SIGTERM every
container is stopped, every sandbox removed, and the process exits 0.
"""

from __future__ import annotations

import argparse
import http.server
import ipaddress
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from ..kubeconfig import api_client_for
from .node import ProcessNode
from .policy import PolicyEnforcer


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.process_node")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--root", required=True, type=Path)
    parser.add_argument("--health-port", required=True, type=int)
    parser.add_argument("--node", action="append", type=_pair, default=[])
    parser.add_argument("--image", action="append", type=_pair, default=[])
    parser.add_argument("--backoff-seconds", type=float, default=10.0)
    # Each node stands for a machine of its own: by default the machine's cores are
    # divided between the nodes (CFS quota), so one node's engines cannot starve another's.
    parser.add_argument("--node-cpus", type=float, default=None)
    parser.add_argument("--no-network-policy", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s"
    )
    api = api_client_for(Path(args.kubeconfig))
    images = {ref: Path(path) for ref, path in args.image}
    cpus = args.node_cpus or (os.cpu_count() or 1) / max(1, len(args.node))
    ready = threading.Event()
    stop = threading.Event()
    enforcer = None if args.no_network_policy else PolicyEnforcer(api, stop)
    if enforcer is not None:
        threading.Thread(target=enforcer.run, name="network-policy", daemon=True).start()
    nodes = [
        ProcessNode(
            api,
            name,
            ipaddress.IPv4Network(cidr),
            args.root,
            images,
            args.backoff_seconds,
            cpus,
            enforcer,
        )
        for name, cidr in args.node
    ]

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if ready.is_set() else 503)
            self.end_headers()
            self.wfile.write(b"ok\n" if ready.is_set() else b"starting\n")

        def log_message(self, format: str, *a: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.health_port), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=n.run, name=f"node-{n.name}", daemon=True) for n in nodes]
    for t in threads:
        t.start()
    while not stop.is_set() and not all(n.registered.is_set() for n in nodes):
        if not all(t.is_alive() for t in threads):
            logging.error("a node failed to register; see above")
            return 1
        stop.wait(0.1)
    ready.set()
    stop.wait()
    logging.info("stopping: %d node(s)", len(nodes))
    for n in nodes:
        n.shutdown()
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
