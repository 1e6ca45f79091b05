"""python -m openmodel.gateway [--host H] [--port P] [--metrics-port M] [--routes FILE]
    [--loop uvloop|asyncio] [--reuse-port]

The OpenAI API on --port (8080); /metrics and /demand on --metrics-port (9090, plain
HTTP; 0: not served).

Platform config from OPENMODEL_CONFIG (its `gateway` section), the cluster from
KUBECONFIG or the in-cluster service account.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import uvloop

from openmodel.config import GATEWAY_METRICS_PORT, GATEWAY_PORT, ConfigError, load_config
from openmodel.gateway.server import serve
from openmodel.gateway.static import RoutesFileError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m openmodel.gateway", description=__doc__)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=GATEWAY_PORT)
    parser.add_argument(
        "--metrics-port", type=int, default=GATEWAY_METRICS_PORT,
        help="plain-HTTP port of /metrics and /demand; 0: not served",
    )  # fmt: skip
    parser.add_argument("--routes", type=Path, help="static routes file instead of the cluster")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop",
        help="event loop: libuv's (uvloop, default) or Python's own",
    )  # fmt: skip
    parser.add_argument(
        "--reuse-port", action="store_true",
        help="bind --port with SO_REUSEPORT so that several gateway processes share it; "
        "each keeps its own state (in-flight counts, holds, limits) and serves its own "
        "/demand on its own --metrics-port: for measurements, not for a pod the "
        "autoscaler reads",
    )  # fmt: skip
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config()
        # libuv's loop: about half the CPU per streamed request of asyncio's own
        # (docs/benchmarks.md, "Gateway"); the proxy is event-loop bound.
        loop_factory = uvloop.new_event_loop if args.loop == "uvloop" else None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            served = serve(
                config, args.host, args.port, args.routes,
                metrics_port=args.metrics_port, reuse_port=args.reuse_port,
            )  # fmt: skip
            runner.run(served)
    except (ConfigError, RoutesFileError) as e:
        print(f"openmodel gateway: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
