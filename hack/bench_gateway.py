"""Benchmark what the gateway adds: streamed chat completions sent straight to simulated
engines (the baseline, round-robin over them) and through the gateway, in the same run.

Everything is on loopback and started here as separate processes: N simulated vLLM
engines (``python -m openmodel.simulator``, one per address 127.0.0.21.., all on one
port, many slots and a fixed service time, so the engine's queue is never the limit), the
gateway (``python -m openmodel.gateway --routes FILE``, static routes to those engines,
default platform config) and the load generator: client processes (this script with
``--client``) each running closed loops of streamed chat completions over keep-alive
connections, with a small HTTP/1.1 client of its own (cheaper per request than aiohttp's,
so the clients take as little CPU as possible from the 2 cores they share with the rest).

For each concurrency (1, 64, 512 streams) it runs a warm-up, then a timed window, first
straight to the engines, then through the gateway, and reports per path: p50/p99 time to
first token (the first content delta) and total time, requests per second (completed in
the window), and the CPU every process used in the window (from /proc); for the gateway
also its RSS and its own ``openmodel_gateway_added_latency_seconds`` histogram (the
window's delta, quantiles estimated as Prometheus's histogram_quantile does). Then the
added latency (gateway minus direct) and PASS/MISS against the goals: p50 added <= 1 ms,
p99 added <= 5 ms (time to first token; total time shown too), throughput >= 90 % of direct.

    .venv/bin/python hack/bench_gateway.py [--quick] [--concurrency 1,64,512]
        [--duration 10] [--warmup 2] [--engines 4] [--clients 2] [--tokens 16]
        [--service-time 0.1] [--pin-gateway] [--keep]

``--pin-gateway`` gives the gateway the last CPU to itself and runs the engines and the
clients on the others, in both paths: the gateway as on a node of its own, so that its
cost shows as latency and CPU rather than as CPU taken from the engines and clients.

Exit status: 0 whether the goals are met or not (a benchmark reports, it does not gate),
2 on an error (a process that did not start, a client that failed), 130 when interrupted.
Every process it started is stopped on the way out, also on errors, Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, Final

MODEL: Final = "bench"
GATEWAY_HOST: Final = "127.0.0.20"
ENGINE_HOST_BASE: Final = 21  # engine i listens on 127.0.0.(21 + i)
P50_ADDED_MAX_S: Final = 0.001
P99_ADDED_MAX_S: Final = 0.005
THROUGHPUT_MIN: Final = 0.90
ADDED_METRIC: Final = "openmodel_gateway_added_latency_seconds"
# The first content delta of a chat stream (the role chunk before it has "role" first).
CONTENT_MARK: Final = b'"delta":{"content":'
START_DEADLINE_S: Final = 30.0
CLIENT_SPAWN_S: Final = 1.5  # time given to client processes to start before the warm-up
REPO: Final = Path(__file__).resolve().parent.parent


# --- the client process -----------------------------------------------------------------


@dataclass
class ClientSpec:
    targets: list[tuple[str, int]]
    loops: int
    first_loop: int  # this process's first loop index over all processes (round-robin)
    tokens: int
    warm_at: float  # wall clock: loops start
    start_at: float  # wall clock: measuring starts
    end_at: float  # wall clock: no new request after this
    out: str


@dataclass
class ClientResult:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    completed_in_window: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


class BadResponse(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection, opened on first use and after an error."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def streams(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.reader is None or self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=1 << 20
            )
        return self.reader, self.writer

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def chat_request(host: str, port: int, tokens: int) -> bytes:
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say something."}],
            "stream": True,
            "max_tokens": tokens,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_chunked(reader: asyncio.StreamReader, t0: float) -> tuple[bytes, float | None]:
    """The body of a chunked response, and when its first content delta arrived."""
    pieces: list[bytes] = []
    first: float | None = None
    tail = b""
    while True:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # the end of the (empty) trailer section
            return b"".join(pieces), first
        data = (await reader.readexactly(size + 2))[:-2]
        if first is None and CONTENT_MARK in tail + data:
            first = time.perf_counter() - t0
        tail = data[-len(CONTENT_MARK) :]
        pieces.append(data)


async def stream_once(conn: Connection, request: bytes, tokens: int) -> tuple[float, float]:
    """One streamed chat completion: (time to first token, total time)."""
    reader, writer = await conn.streams()
    t0 = time.perf_counter()
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    status = int(head[9:12])
    if b"transfer-encoding: chunked" in head:
        body, ttft = await read_chunked(reader, t0)
    else:
        length = int(head.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
        body, ttft = await reader.readexactly(length), None
    total = time.perf_counter() - t0
    if b"connection: close" in head:
        conn.close()
    if status != 200:
        raise BadResponse(f"HTTP {status}: {body[:200]!r}")
    events = body.count(b"data: ")
    if ttft is None or events != tokens + 2 or not body.endswith(b"data: [DONE]\n\n"):
        raise BadResponse(f"{events} events (want {tokens + 2}), ends {body[-40:]!r}")
    return ttft, total


async def client_loop(index: int, spec: ClientSpec, result: ClientResult) -> None:
    conns = [Connection(h, p) for h, p in spec.targets]
    requests = [chat_request(h, p, spec.tokens) for h, p in spec.targets]
    turn = index  # loops start on different engines, then each goes round the list
    await asyncio.sleep(max(0.0, spec.warm_at - time.time()))
    try:
        while (started := time.time()) < spec.end_at:
            i = turn % len(conns)
            turn += 1
            try:
                ttft, total = await stream_once(conns[i], requests[i], spec.tokens)
            except (OSError, ValueError, IndexError, BadResponse, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError) as e:  # fmt: skip
                conns[i].close()
                if started >= spec.start_at:
                    result.errors += 1
                    if len(result.error_samples) < 5:
                        result.error_samples.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.05)
                continue
            if started >= spec.start_at:
                result.ttft.append(ttft)
                result.total.append(total)
                if time.time() <= spec.end_at:
                    result.completed_in_window += 1
    finally:
        for conn in conns:
            conn.close()


async def run_client(spec: ClientSpec) -> None:
    result = ClientResult()
    await asyncio.gather(
        *(client_loop(spec.first_loop + j, spec, result) for j in range(spec.loops))
    )
    Path(spec.out).write_text(json.dumps(asdict(result)))


# --- processes ---------------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark process dies, however it dies."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Processes:
    """Every process the benchmark starts; stop_all() ends each of them by its pid."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.children: list[Child] = []
        self.env = {k: v for k, v in os.environ.items() if k != "OPENMODEL_CONFIG"}
        self.env["PYTHONUNBUFFERED"] = "1"

    def start(self, name: str, argv: Sequence[str], cpus: set[int] | None = None) -> Child:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
                start_new_session=True,  # Ctrl-C reaches us; we stop them in order
                preexec_fn=_die_with_parent,
            )
        child = Child(name, popen, log)
        self.children.append(child)
        if cpus:
            os.sched_setaffinity(popen.pid, cpus)
        return child

    def stop(self, child: Child, grace_s: float = 5.0) -> None:
        if child.popen.poll() is None:
            child.popen.terminate()
            try:
                child.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                child.popen.kill()
                child.popen.wait(5.0)
        if child in self.children:
            self.children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(list(self.children)):
            self.stop(child)


class BenchError(Exception):
    pass


def _bindable(host: str, port: int) -> int | None:
    """The port bound on `host` (0 picks one), or None when it is taken."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return None
        return int(s.getsockname()[1])


def common_free_port(hosts: Sequence[str]) -> int:
    for _ in range(50):
        port = _bindable(hosts[0], 0)
        if port is not None and all(_bindable(h, port) for h in hosts[1:]):
            return port
    raise BenchError(f"no port free on all of {hosts[0]}..{hosts[-1]}")


def wait_until(what: str, ready: Any, children: Sequence[Child], deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while not ready():
        for child in children:
            if child.popen.poll() is not None:
                raise BenchError(
                    f"{child.name} exited ({child.popen.returncode}) while waiting for {what}:\n"
                    + child.log_tail()
                )
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {c.name}\n{c.log_tail(5)}" for c in children)
            raise BenchError(f"{what} not ready after {deadline_s:g} s\n{tails}")
        time.sleep(0.1)


def engine_argv(host: str, port: int, slots: int, service_time: float) -> list[str]:
    return [
        *(sys.executable, "-m", "openmodel.simulator", "--host", host, "--port", str(port)),
        *("--slots", str(slots), "--service-time", str(service_time), "--model", MODEL),
    ]


def all_listening(engines: Sequence[Child]) -> bool:
    return all("listening on" in e.log_tail(3) for e in engines)


def start_engines(
    procs: Processes, count: int, slots: int, service_time: float, cpus: set[int] | None
) -> list[Child]:
    hosts = [f"127.0.0.{ENGINE_HOST_BASE + i}" for i in range(count)]
    for _ in range(3):  # the port can be taken between the probe and the engines' bind
        port = common_free_port(hosts)
        engines = [
            procs.start(f"engine-{i}", engine_argv(host, port, slots, service_time), cpus)
            for i, host in enumerate(hosts)
        ]
        try:
            wait_until("the engines", partial(all_listening, engines), engines, START_DEADLINE_S)
        except BenchError as e:
            for engine in engines:
                procs.stop(engine)
            if "Address already in use" not in str(e):
                raise
            continue
        return engines
    raise BenchError("the engines could not bind a common port three times")


def engine_targets(engines: Sequence[Child]) -> list[tuple[str, int]]:
    targets = []
    for engine in engines:
        url = engine.log_tail(3).split("listening on http://", 1)[1].split()[0]
        host, port = url.rsplit(":", 1)
        targets.append((host, int(port)))
    return targets


_NO_PROXY: Final = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    try:
        with _NO_PROXY.open(url, timeout=timeout_s) as r:
            return int(r.status), r.read().decode()
    except OSError:
        return 0, ""


def start_gateway(
    procs: Processes, targets: Sequence[tuple[str, int]], cpus: set[int] | None
) -> tuple[Child, str]:
    routes = procs.workdir / "routes.yaml"
    routes.write_text(
        json.dumps(  # JSON is YAML
            {
                "models": [
                    {
                        "name": MODEL,
                        "namespace": "bench",
                        "modelDeployment": MODEL,
                        "engine": "vllm",
                        "port": targets[0][1],
                        "hosts": [h for h, _ in targets],
                    }
                ]
            },
            indent=2,
        )
    )
    port = _bindable(GATEWAY_HOST, 0)
    if port is None:
        raise BenchError(f"cannot bind {GATEWAY_HOST}")
    gateway = procs.start(
        "gateway",
        [sys.executable, "-m", "openmodel.gateway", "--host", GATEWAY_HOST,
         "--port", str(port), "--routes", str(routes), "--log-level", "WARNING"],
        cpus,
    )  # fmt: skip
    base = f"http://{GATEWAY_HOST}:{port}"
    wait_until(
        "the gateway", lambda: http_get(base + "/readyz")[0] == 200, [gateway], START_DEADLINE_S
    )
    return gateway, base


# --- /proc --------------------------------------------------------------------------------

TICK_S: Final = 1.0 / os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """user + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime


def process_memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


def machine_cpu_s() -> tuple[float, float, float]:
    """(busy, steal, irq + softirq) CPU seconds of the whole machine since boot."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle, iowait
    steal = parts[7] if len(parts) > 7 else 0
    # guest time is already counted in user/nice
    return (sum(parts[:8]) - idle - steal) * TICK_S, steal * TICK_S, (parts[5] + parts[6]) * TICK_S


def all_processes_cpu_s() -> dict[int, tuple[str, float]]:
    """pid -> (command name, CPU seconds) of every process on the machine."""
    found: dict[int, tuple[str, float]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rsplit(")", 1)[1].split()
        found[int(stat.parent.name)] = (name, (int(fields[11]) + int(fields[12])) * TICK_S)
    return found


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


# --- the gateway's histogram -------------------------------------------------------------


def added_buckets(metrics_text: str) -> dict[float, float]:
    """le -> cumulative count of the added-latency histogram, summed over label sets."""
    buckets: dict[float, float] = {}
    for line in metrics_text.splitlines():
        if not line.startswith(ADDED_METRIC + "_bucket{"):
            continue
        labels, value = line.rsplit(" ", 1)
        le = labels.split('le="', 1)[1].split('"', 1)[0]
        bound = math.inf if le == "+Inf" else float(le)
        buckets[bound] = buckets.get(bound, 0.0) + float(value)
    return buckets


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus's estimate: linear within the bucket holding rank q * count."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # the highest finite bound, as Prometheus answers
            if count == below:
                return bound
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


# --- one measured phase ------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Phase:
    path: str  # "direct" or "gateway"
    concurrency: int
    window_s: float
    requests: int
    completed_in_window: int
    errors: int
    error_samples: list[str]
    ttft_p50: float
    ttft_p99: float
    total_p50: float
    total_p99: float
    clients: int
    client_cores: list[float]  # each client process's CPU / window
    engines_cores: float
    gateway_cores: float
    gateway_cpu_s: float
    gateway_rss_mib: float
    gateway_hwm_mib: float
    machine_cores: float  # busy CPU of the whole machine / window
    others_cores: float  # machine busy minus every process of the benchmark
    steal_cores: float
    irq_cores: float  # irq + softirq time of the machine (loopback traffic, mostly)
    top_others: list[tuple[str, float]]  # the busiest other processes, in cores
    hist_p50: float | None = None
    hist_p99: float | None = None
    hist_count: float = 0.0

    @property
    def rps(self) -> float:
        return self.completed_in_window / self.window_s


@dataclass
class Sample:
    at: float  # monotonic
    ours: dict[int, float]  # pid -> CPU seconds, the benchmark's processes
    machine: tuple[float, float, float]
    buckets: dict[float, float]
    everyone: dict[int, tuple[str, float]]


def top_others(s0: Sample, s1: Sample, window: float, n: int = 3) -> list[tuple[str, float]]:
    """The other processes' CPU in the window, grouped by command name, busiest first."""
    by_name: dict[str, float] = {}
    for pid, (name, cpu) in s1.everyone.items():
        if pid in s1.ours:
            continue
        used = cpu - s0.everyone.get(pid, (name, 0.0))[1]
        if used > 0:
            by_name[name] = by_name.get(name, 0.0) + used / window
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1])
    return [(name, cores) for name, cores in ranked[:n] if cores >= 0.01]


def split(total: int, parts: int) -> list[int]:
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def sleep_until(wall: float) -> None:
    time.sleep(max(0.0, wall - time.time()))


@dataclass
class Bench:
    args: argparse.Namespace
    procs: Processes
    engines: list[Child]
    targets: list[tuple[str, int]]
    gateway: Child
    gateway_url: str
    load_cpus: set[int] | None  # engines' and clients' CPUs with --pin-gateway

    def run_phase(self, path: str, concurrency: int, phase_no: int) -> Phase:
        args = self.args
        if path == "direct":
            targets = self.targets
        else:
            host, port = self.gateway_url.removeprefix("http://").rsplit(":", 1)
            targets = [(host, int(port))]
        n_clients = max(1, min(args.clients, concurrency))
        warm_at = time.time() + CLIENT_SPAWN_S
        start_at = warm_at + args.warmup
        end_at = start_at + args.duration
        clients: list[tuple[Child, Path]] = []
        first = 0
        for j, loops in enumerate(split(concurrency, n_clients)):
            out = self.procs.workdir / f"phase{phase_no}-client{j}.json"
            spec = ClientSpec(
                targets, loops, first, args.tokens, warm_at, start_at, end_at, str(out)
            )
            first += loops
            argv = [sys.executable, str(Path(__file__).resolve()), "--client",
                    json.dumps(asdict(spec))]  # fmt: skip
            name = f"phase{phase_no}-client{j}"
            clients.append((self.procs.start(name, argv, self.load_cpus), out))
        watched = [c for c, _ in clients] + [self.gateway] + self.engines

        def sample() -> Sample:
            buckets = added_buckets(http_get(self.gateway_url + "/metrics")[1])
            cpu = {c.pid: process_cpu_s(c.pid) for c in watched}
            cpu[os.getpid()] = process_cpu_s(os.getpid())
            return Sample(time.monotonic(), cpu, machine_cpu_s(), buckets, all_processes_cpu_s())

        sleep_until(start_at)
        s0 = sample()
        sleep_until(end_at)
        s1 = sample()
        t0, cpu0, (busy0, steal0, irq0), hist0 = s0.at, s0.ours, s0.machine, s0.buckets
        t1, cpu1, (busy1, steal1, irq1), hist1 = s1.at, s1.ours, s1.machine, s1.buckets
        rss, hwm = process_memory_mib(self.gateway.pid)
        for child, _ in clients:
            try:
                child.popen.wait(30.0 + args.service_time * 10)
            except subprocess.TimeoutExpired:
                raise BenchError(f"{child.name} did not finish:\n{child.log_tail()}") from None
            if child.popen.returncode != 0:
                raise BenchError(f"{child.name} failed:\n{child.log_tail()}")
            self.procs.stop(child)
        merged = ClientResult()
        for _, out in clients:
            part = ClientResult(**json.loads(out.read_text()))
            merged.ttft += part.ttft
            merged.total += part.total
            merged.completed_in_window += part.completed_in_window
            merged.errors += part.errors
            merged.error_samples += part.error_samples
        if not merged.total:
            raise BenchError(f"{path} x{concurrency}: no request completed: {merged.error_samples}")
        window = t1 - t0

        def cores(pid: int) -> float:
            return (cpu1.get(pid, 0.0) - cpu0.get(pid, 0.0)) / window

        ours = sum(cores(pid) for pid in cpu1)
        machine = (busy1 - busy0) / window
        delta = {b: hist1.get(b, 0.0) - hist0.get(b, 0.0) for b in hist1}
        phase = Phase(
            path=path,
            concurrency=concurrency,
            window_s=window,
            requests=len(merged.total),
            completed_in_window=merged.completed_in_window,
            errors=merged.errors,
            error_samples=merged.error_samples[:5],
            ttft_p50=percentile(merged.ttft, 0.50),
            ttft_p99=percentile(merged.ttft, 0.99),
            total_p50=percentile(merged.total, 0.50),
            total_p99=percentile(merged.total, 0.99),
            clients=n_clients,
            client_cores=[cores(c.pid) for c, _ in clients],
            engines_cores=sum(cores(e.pid) for e in self.engines),
            gateway_cores=cores(self.gateway.pid),
            gateway_cpu_s=cores(self.gateway.pid) * window,
            gateway_rss_mib=rss,
            gateway_hwm_mib=hwm,
            machine_cores=machine,
            others_cores=max(0.0, machine - ours),
            steal_cores=(steal1 - steal0) / window,
            irq_cores=(irq1 - irq0) / window,
            top_others=top_others(s0, s1, window),
            hist_count=delta.get(math.inf, 0.0),
        )
        if path == "gateway":
            phase.hist_p50 = histogram_quantile(0.50, delta)
            phase.hist_p99 = histogram_quantile(0.99, delta)
        return phase


# --- report ------------------------------------------------------------------------------


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def print_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
    print("  " + "  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)))


def limit_of(direct: Phase, via: Phase, cores: int) -> str:
    """What most likely capped the gateway run, from the CPU it used."""
    if via.gateway_cores >= 0.9:
        return f"gateway CPU ({via.gateway_cores:.2f} of its 1 core)"
    if via.machine_cores >= 0.9 * cores:
        return f"machine CPU ({via.machine_cores:.2f} of {cores} cores busy)"
    if max([*via.client_cores, 0.0]) >= 0.9:
        return "a client process's CPU"
    return "none (engine service time)"


def report(phases: list[Phase], cores: int) -> None:
    print("\nPer path (window of each phase; latency in ms):")
    rows = []
    for p in phases:
        rows.append(
            [str(p.concurrency), p.path, str(p.requests), str(p.errors), f"{p.rps:.1f}",
             ms(p.ttft_p50), ms(p.ttft_p99), ms(p.total_p50), ms(p.total_p99),
             f"{p.gateway_cpu_s:.2f}" if p.path == "gateway" else "-",
             f"{p.gateway_rss_mib:.0f}/{p.gateway_hwm_mib:.0f}" if p.path == "gateway" else "-"]
        )  # fmt: skip
    print_table(
        ["streams", "path", "requests", "errors", "req/s", "TTFT p50", "TTFT p99",
         "total p50", "total p99", "gw CPU s", "gw RSS/peak MiB"],
        rows,
    )  # fmt: skip
    print("\nCPU in each window (cores = CPU seconds / wall seconds):")
    rows = []
    for p in phases:
        per_req = p.gateway_cpu_s / max(1, p.completed_in_window) * 1000
        rows.append(
            [str(p.concurrency), p.path, f"{p.machine_cores:.2f}",
             f"{p.gateway_cores:.2f}", f"{per_req:.2f}" if p.path == "gateway" else "-",
             f"{p.engines_cores:.2f}",
             f"{p.clients} x (" + ", ".join(f"{c:.2f}" for c in p.client_cores) + ")",
             f"{p.others_cores:.2f}", f"{p.steal_cores:.2f}"]
        )  # fmt: skip
    print_table(
        ["streams", "path", "machine", "gateway", "gw CPU ms/req", "engines", "clients",
         "others", "steal"],
        rows,
    )  # fmt: skip
    print(
        f"\nAdded by the gateway (gateway minus direct, ms) against the goals: p50 <= "
        f"{P50_ADDED_MAX_S * 1000:g} ms, p99 <= {P99_ADDED_MAX_S * 1000:g} ms, "
        f"throughput >= {THROUGHPUT_MIN:.0%} of direct:"
    )
    rows = []
    by = {(p.concurrency, p.path): p for p in phases}
    for c in sorted({p.concurrency for p in phases}):
        d, g = by.get((c, "direct")), by.get((c, "gateway"))
        if d is None or g is None:
            continue
        a50, a99 = g.ttft_p50 - d.ttft_p50, g.ttft_p99 - d.ttft_p99
        t50, t99 = g.total_p50 - d.total_p50, g.total_p99 - d.total_p99
        ratio = g.rps / d.rps if d.rps else 0.0
        ok = a50 <= P50_ADDED_MAX_S and a99 <= P99_ADDED_MAX_S and ratio >= THROUGHPUT_MIN
        rows.append(
            [str(c), f"{ms(a50)} {verdict(a50 <= P50_ADDED_MAX_S)}",
             f"{ms(a99)} {verdict(a99 <= P99_ADDED_MAX_S)}",
             f"{ms(t50)} {verdict(t50 <= P50_ADDED_MAX_S)}",
             f"{ms(t99)} {verdict(t99 <= P99_ADDED_MAX_S)}",
             f"{ratio:.1%} {verdict(ratio >= THROUGHPUT_MIN)}",
             f"{ms(g.hist_p50)} / {ms(g.hist_p99)}", verdict(ok),
             "-" if ok else limit_of(d, g, cores)]
        )  # fmt: skip
    print_table(
        ["streams", "TTFT p50", "TTFT p99", "total p50", "total p99", "req/s ratio",
         "gw histogram p50/p99", "overall", "limit seen"],
        rows,
    )  # fmt: skip
    print("\nOther processes in each window (cores; irq+softirq of the machine apart):")
    for p in phases:
        busiest = ", ".join(f"{name} {cores:.2f}" for name, cores in p.top_others) or "none"
        print(f"  {p.path:>7} x{p.concurrency:<4} irq+softirq {p.irq_cores:.2f}; {busiest}")
    errors = [p for p in phases if p.errors]
    for p in errors:
        print(f"  {p.path} x{p.concurrency}: {p.errors} errors, e.g. {p.error_samples[:2]}")
    noisy = [p for p in phases if p.others_cores > 0.3]
    for p in noisy:
        print(
            f"  NOISY: {p.path} x{p.concurrency}: other processes (and the kernel) used "
            f"{p.others_cores:.2f} cores during the window"
        )


def git_describe() -> str:
    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True)
        return done.stdout.strip()

    rev = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "operator/openmodel/gateway",
                "operator/openmodel/simulator")  # fmt: skip
    return rev + (" (gateway/simulator modified in the work tree)" if dirty else "")


def print_conditions(args: argparse.Namespace, concurrencies: list[int]) -> int:
    cores = len(os.sched_getaffinity(0))
    load = Path("/proc/loadavg").read_text().split()[:3]
    mem = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    import aiohttp  # only for its version: the clients here do not use it

    print("Gateway benchmark", time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    print(f"  machine: {cores} cores usable ({os.cpu_count()} online), {cpu_model()}, {mem}")
    print(f"  load average at start: {' '.join(load)} (1, 5, 15 min)")
    print(
        f"  python {platform.python_version()}, aiohttp {aiohttp.__version__}, "
        f"openmodel at {git_describe()}"
    )
    print(
        f"  engines: {args.engines} simulated vLLM processes (127.0.0.{ENGINE_HOST_BASE}.."
        f"{ENGINE_HOST_BASE + args.engines - 1}), {args.slots} slots, service time "
        f"{args.service_time:g} s, {args.tokens} tokens per stream (first after "
        f"{args.service_time * 0.1 * 1000:g} ms)"
    )
    clients = ", ".join(f"{c} streams: {max(1, min(args.clients, c))}" for c in concurrencies)
    print(f"  client processes: {clients}; own HTTP/1.1 client, asyncio, keep-alive")
    print(
        f"  each phase: {args.warmup:g} s warm-up, then {args.duration:g} s measured; "
        "direct (round-robin per request over the engines) then through the gateway"
    )
    return cores


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s windows, 1 s warm-up")
    parser.add_argument("--concurrency", default="1,64,512", help="streams, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--engines", type=int, default=4)
    parser.add_argument("--slots", type=int, default=4096)
    parser.add_argument("--service-time", type=float, default=0.1)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--clients", type=int, default=2, help="client processes (at most)")
    parser.add_argument(
        "--pin-gateway",
        action="store_true",
        help="the gateway alone on the last CPU, engines and clients on the others",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument("--client", help=argparse.SUPPRESS)  # internal: one client process
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup = min(args.duration, 3.0), min(args.warmup, 1.0)
    return args


def cpu_split(pin: bool) -> tuple[set[int] | None, set[int] | None]:
    """(gateway's CPUs, everyone else's): with --pin-gateway the gateway gets the last CPU
    to itself, as it would on a node of its own; the direct path runs on the others too."""
    cpus = os.sched_getaffinity(0)
    if not pin or len(cpus) < 2:
        return None, None
    last = max(cpus)
    return {last}, cpus - {last}


def _raise_on_sigterm(signum: int, _: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.client:
        asyncio.run(run_client(ClientSpec(**json.loads(args.client))))
        return 0
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C / kill -INT must still stop.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    cores = print_conditions(args, concurrencies)
    workdir = Path(tempfile.mkdtemp(prefix="openmodel-bench-gateway-"))
    procs = Processes(workdir)
    try:
        gateway_cpus, load_cpus = cpu_split(args.pin_gateway)
        engines = start_engines(procs, args.engines, args.slots, args.service_time, load_cpus)
        targets = engine_targets(engines)
        gateway, url = start_gateway(procs, targets, gateway_cpus)
        print(f"  gateway: pid {gateway.pid} at {url}; engines at port {targets[0][1]}")
        if gateway_cpus and load_cpus:
            print(
                f"  pinned: gateway on CPU {sorted(gateway_cpus)}, engines and clients on "
                f"{sorted(load_cpus)} (both paths)"
            )
        bench = Bench(args, procs, engines, targets, gateway, url, load_cpus)
        phases: list[Phase] = []
        for concurrency in concurrencies:
            for path in ("direct", "gateway"):
                phase = bench.run_phase(path, concurrency, len(phases))
                phases.append(phase)
                print(
                    f"  {path:>7} x{concurrency:<4} {phase.rps:8.1f} req/s  "
                    f"TTFT p50 {ms(phase.ttft_p50)} p99 {ms(phase.ttft_p99)} ms  "
                    f"errors {phase.errors}",
                    flush=True,
                )
                time.sleep(1.0)  # let the last streams' connections close
        report(phases, cores)
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
        print(f"\n  load average at the end: {load}")
        return 0
    except BenchError as e:
        print(f"bench_gateway: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bench_gateway: interrupted; stopping what it started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"  work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
