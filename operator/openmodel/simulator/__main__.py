"""``python -m openmodel.simulator``: run one simulated engine until SIGTERM or SIGINT
(then drain for ``--shutdown-timeout`` seconds, as vLLM does).

Prints one line, ``listening on http://HOST:PORT``, once the socket accepts connections
(with ``--port 0`` that is how a caller learns the port).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from openmodel.simulator.server import ENGINES, TASKS, start_simulator


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m openmodel.simulator", description="A simulated vLLM or TGI engine."
    )
    parser.add_argument("--engine", choices=ENGINES, default="vllm")
    parser.add_argument(
        "--task", choices=TASKS, default="generate",
        help="a generative model, or a pooling one: embed (embeddings and scores) or rerank "
        "(a cross-encoder's rerank and score); pooling with the vllm engine only",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--slots", type=int, default=4, help="requests served at once")
    parser.add_argument(
        "--service-time", type=float, default=0.5, help="seconds each request holds a slot"
    )
    parser.add_argument("--model", default="simulated/model", help="the served model name")
    parser.add_argument(
        "--prefill-seconds-per-token",
        type=float,
        default=0.0,
        help="prefill time of each prompt token the prefix cache does not hold",
    )
    parser.add_argument(
        "--cache-blocks",
        type=int,
        default=4096,
        help="the prefix cache's size in 16-token blocks (the KV cache it stands for)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=float,
        default=0.0,
        help="as vLLM's: seconds requests in flight may run on after SIGTERM (0 aborts them)",
    )
    return parser


async def _run(args: argparse.Namespace) -> None:
    handle = await start_simulator(
        args.engine,
        args.host,
        args.port,
        args.slots,
        args.service_time,
        args.model,
        prefill_seconds_per_token=args.prefill_seconds_per_token,
        cache_blocks=args.cache_blocks,
        task=args.task,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"listening on {handle.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await handle.stop(drain_seconds=args.shutdown_timeout)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (
        args.slots < 1
        or args.service_time < 0
        or args.shutdown_timeout < 0
        or args.prefill_seconds_per_token < 0
        or args.cache_blocks < 1
        or (args.task != "generate" and args.engine != "vllm")
    ):
        print(
            "--slots and --cache-blocks must be >= 1; --service-time, --shutdown-timeout "
            "and --prefill-seconds-per-token >= 0; --task embed or rerank needs --engine vllm",
            file=sys.stderr,
        )
        return 2
    asyncio.run(_run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
