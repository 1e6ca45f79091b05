"""python -m openmodel.gateway [--host H] [--port P] [--metrics-port M] [--routes FILE]
    [--loop uvloop|asyncio]

The OpenAI API on --port (8080); /metrics and /demand on --metrics-port (9090, plain
HTTP; 0: not served).

Platform config from OPENMODEL_CONFIG (its `gateway` section), the cluster from
KUBECONFIG or the in-cluster service account. With `gateway.workers` N > 1 this process
supervises N worker processes sharing --port and serves the monitoring port for them
(gateway/workers/supervisor.py); --worker, --worker-socket and --parent-fd are how it
starts them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

import uvloop

from openmodel.config import (
    GATEWAY_METRICS_PORT,
    GATEWAY_PORT,
    ConfigError,
    PlatformConfig,
    load_config,
)
from openmodel.gateway.server import serve
from openmodel.gateway.static import RoutesFileError
from openmodel.gateway.workers.role import WorkerRole
from openmodel.gateway.workers.supervisor import CONFIG_ERROR, Supervisor


def _worker_of(value: str) -> tuple[int, int]:
    """ "I/N": worker I of N."""
    index, _, count = value.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected INDEX/COUNT, got {value!r}") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"expected 0 <= INDEX < COUNT, got {value!r}")
    return i, n


def parse_args(argv: list[str] | None) -> argparse.Namespace:
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
    # Set by the supervisor for its workers only.
    parser.add_argument("--worker", type=_worker_of, help=argparse.SUPPRESS)
    parser.add_argument("--worker-socket", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    given = (args.worker_socket, args.parent_fd, args.started)
    if args.worker is not None and None in given:
        parser.error("--worker needs --worker-socket, --parent-fd and --started")
    return args


def _worker_argv(args: argparse.Namespace) -> list[str]:
    """The command line a worker gets from the supervisor's (its own flags added there)."""
    argv = ["--host", args.host, "--port", str(args.port), "--metrics-port", "0",
            "--log-level", args.log_level, "--loop", args.loop]  # fmt: skip
    return argv + (["--routes", str(args.routes)] if args.routes is not None else [])


async def _serve_worker(config: PlatformConfig, args: argparse.Namespace, role: WorkerRole) -> None:
    """One worker: serve until SIGTERM or until the supervisor's pipe ends (it is gone)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def supervisor_gone() -> None:
        loop.remove_reader(args.parent_fd)  # at its end the pipe stays readable
        stop.set()

    loop.add_reader(args.parent_fd, supervisor_gone)
    await serve(config, args.host, args.port, args.routes, stop=stop, worker=role)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    worker = args.worker
    prefix = "" if worker is None else f"worker {worker[0]} "
    logging.basicConfig(
        level=args.log_level, format=f"%(asctime)s %(levelname)s {prefix}%(message)s"
    )
    try:
        config = load_config()
        # libuv's loop: about half the CPU per streamed request of asyncio's own
        # (docs/benchmarks.md, "Gateway"); the proxy is event-loop bound.
        loop_factory = uvloop.new_event_loop if args.loop == "uvloop" else None
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            if worker is not None:
                role = WorkerRole(worker[0], worker[1], args.worker_socket, args.started)
                runner.run(_serve_worker(config, args, role))
            elif config.gateway.workers > 1:
                supervisor = Supervisor(
                    config.gateway.workers, _worker_argv(args), args.host, args.metrics_port
                )
                return runner.run(supervisor.run())
            else:
                served = serve(
                    config, args.host, args.port, args.routes, metrics_port=args.metrics_port
                )
                runner.run(served)
    except (ConfigError, RoutesFileError) as e:
        print(f"openmodel gateway: {e}", file=sys.stderr)
        return CONFIG_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
