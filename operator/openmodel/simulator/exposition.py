"""The simulator's /metrics bodies, byte for byte in each engine's own style.

vLLM exports through prometheus_client: HELP then TYPE per family, labels
``engine``/``model_name`` (``le`` last on buckets), Go-style floats (``2.0``,
``1.2345678e+07``, ``+Inf``), counters suffixed ``_total``. The real vLLM 0.32 also
exports ``_created`` series for counters and histograms; the simulator leaves them out
(nothing reads them; tests/e2e/real_engine/metrics_contract.py checks every family the
simulator does export against the real engine's).
TGI exports through the Rust ``metrics-exporter-prometheus`` crate: TYPE only, no labels
on the gauges, no ``_total`` suffix, Rust float formatting (``3``, ``0.5``), a blank line
after each family.
SGLang exports through prometheus_client in multiprocess mode (the scheduler and the
tokenizer manager are separate processes): HELP then TYPE, Go-style floats, label names
sorted (the multiprocess collector keys series by ``json.dumps(..., sort_keys=True)``);
the scheduler's gauges carry ``engine_type``, ``model_name``, ``pp_rank``, ``tp_rank``
(``SchedulerMetricsMixin.init_metrics``), the tokenizer manager's counters
``model_name`` only; no ``_created`` series in multiprocess mode.
llama.cpp's server writes its own text (``server_task_result_metrics::to_metrics``):
HELP, TYPE and one unlabelled sample per family, counters first, values through a C++
stream (``%g``: ``0``, ``3``, ``0.25``, ``1.23457e+07``).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final

# vLLM's buckets for request latency histograms (e2e, queue time), in seconds.
VLLM_LATENCY_BUCKETS: Final = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
    120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


def _tgi_duration_buckets() -> tuple[float, ...]:
    # TGI's router: 35 buckets growing by 1.5x from 0.0001 s.
    buckets, value = [], 0.0001
    for _ in range(35):
        value *= 1.5
        buckets.append(value)
    return tuple(buckets)


TGI_DURATION_BUCKETS: Final = _tgi_duration_buckets()


@dataclass
class Histogram:
    """Cumulative-bucket histogram, as Prometheus clients keep them."""

    bounds: Sequence[float]
    counts: list[int] = field(init=False)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.bounds)

    def observe(self, value: float) -> None:
        # Buckets are "less or equal"; the first bound >= value and all above it count it.
        for i in range(bisect.bisect_left(self.bounds, value), len(self.bounds)):
            self.counts[i] += 1
        self.total += value
        self.count += 1


@dataclass
class EngineStats:
    """What the engine would count; read by the metrics renderers and by tests."""

    slots: int
    waiting: int = 0
    running: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    # The prefix cache (prefix_cache.py), in tokens as vLLM counts them.
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    requests: int = 0
    succeeded: int = 0
    # Finished requests by vLLM's finished_reason ("length", "stop").
    finished: dict[str, int] = field(default_factory=dict)
    # Clients that went away, waiting or mid-request (vLLM counts these nowhere).
    disconnected: int = 0
    # Requests in flight that a stop cut (all of them without a drain; those left when
    # the drain's budget ran out).
    aborted_by_stop: int = 0
    # New generation requests answered 500 during a drain.
    refused_while_draining: int = 0
    e2e: Histogram = field(default_factory=lambda: Histogram(VLLM_LATENCY_BUCKETS))
    queue_time: Histogram = field(default_factory=lambda: Histogram(VLLM_LATENCY_BUCKETS))
    tgi_duration: Histogram = field(default_factory=lambda: Histogram(TGI_DURATION_BUCKETS))
    tgi_queue_duration: Histogram = field(default_factory=lambda: Histogram(TGI_DURATION_BUCKETS))


def go_float(value: float) -> str:
    """prometheus_client's floatToGoString."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    # Go switches to exponent notation sooner than Python does.
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def rust_float(value: float) -> str:
    """Rust's Display for f64 as metrics-exporter-prometheus writes it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    # Shortest round-trip digits, never in exponent form, no trailing ".0".
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def cpp_float(value: float) -> str:
    """A double through `std::stringstream <<` (6 significant digits, as %g)."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:g}"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


# vLLM's FinishReason strings, in its order; every series exists from the start.
VLLM_FINISHED_REASONS: Final = ("stop", "length", "abort", "error", "repetition")


def render_vllm(stats: EngineStats, model: str) -> str:
    model_label = f'model_name="{_escape_label(model)}"'
    labels = f'engine="0",{model_label}'
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, value: float) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        lines.append(f"{name}{{{labels}}} {go_float(value)}")

    def histogram(name: str, help_text: str, hist: Histogram) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} histogram")
        for bound, count in zip(hist.bounds, hist.counts, strict=True):
            lines.append(f'{name}_bucket{{{labels},le="{go_float(bound)}"}} {go_float(count)}')
        lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {go_float(hist.count)}')
        lines.append(f"{name}_count{{{labels}}} {go_float(hist.count)}")
        lines.append(f"{name}_sum{{{labels}}} {go_float(hist.total)}")

    family(
        "vllm:num_requests_running",
        "gauge",
        "Number of requests in model execution batches.",
        stats.running,
    )
    family(
        "vllm:num_requests_waiting",
        "gauge",
        "Number of requests waiting to be processed.",
        stats.waiting,
    )
    # No real KV cache: occupied slots are the closest stand-in.
    family(
        "vllm:kv_cache_usage_perc",
        "gauge",
        "KV-cache usage. 1 means 100 percent usage.",
        stats.running / stats.slots,
    )
    family(
        "vllm:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        stats.prompt_tokens,
    )
    family(
        "vllm:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        stats.generation_tokens,
    )
    family(
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prefix cache queries, in terms of number of queried tokens.",
        stats.prefix_cache_queries,
    )
    family(
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prefix cache hits, in terms of number of cached tokens.",
        stats.prefix_cache_hits,
    )
    success = "vllm:request_success_total"
    lines.append(f"# HELP {success} Count of successfully processed requests.")
    lines.append(f"# TYPE {success} counter")
    for reason in VLLM_FINISHED_REASONS:
        count = stats.finished.get(reason, 0)
        lines.append(
            f'{success}{{engine="0",finished_reason="{reason}",{model_label}}} {go_float(count)}'
        )
    histogram(
        "vllm:e2e_request_latency_seconds",
        "Histogram of e2e request latency in seconds.",
        stats.e2e,
    )
    histogram(
        "vllm:request_queue_time_seconds",
        "Histogram of time spent in WAITING phase for request.",
        stats.queue_time,
    )
    return "\n".join(lines) + "\n"


def render_tgi(stats: EngineStats) -> str:
    blocks: list[str] = []

    def single(name: str, kind: str, value: float) -> None:
        blocks.append(f"# TYPE {name} {kind}\n{name} {rust_float(value)}\n")

    def histogram(name: str, hist: Histogram) -> None:
        rows = [f"# TYPE {name} histogram"]
        for bound, count in zip(hist.bounds, hist.counts, strict=True):
            rows.append(f'{name}_bucket{{le="{rust_float(bound)}"}} {count}')
        rows.append(f'{name}_bucket{{le="+Inf"}} {hist.count}')
        rows.append(f"{name}_sum {rust_float(hist.total)}")
        rows.append(f"{name}_count {hist.count}")
        blocks.append("\n".join(rows) + "\n")

    single("tgi_queue_size", "gauge", stats.waiting)
    single("tgi_batch_current_size", "gauge", stats.running)
    single("tgi_request_count", "counter", stats.requests)
    single("tgi_request_success", "counter", stats.succeeded)
    histogram("tgi_request_duration", stats.tgi_duration)
    histogram("tgi_request_queue_duration", stats.tgi_queue_duration)
    return "\n".join(blocks)


def render_sglang(stats: EngineStats, model: str) -> str:
    name_label = f'model_name="{_escape_label(model)}"'
    scheduler = f'engine_type="unified",{name_label},pp_rank="0",tp_rank="0"'
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, labels: str, value: float) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
        sample = f"{name}_total" if kind == "counter" and not name.endswith("_total") else name
        lines.append(f"{sample}{{{labels}}} {go_float(value)}")

    family(
        "sglang:num_running_reqs",
        "gauge",
        "The number of running requests.",
        scheduler,
        stats.running,
    )
    family(
        "sglang:num_queue_reqs",
        "gauge",
        "The number of requests in the waiting queue.",
        scheduler,
        stats.waiting,
    )
    # No real KV cache: occupied slots are the closest stand-in.
    family(
        "sglang:token_usage",
        "gauge",
        "The token usage.",
        scheduler,
        stats.running / stats.slots,
    )
    family(
        "sglang:cache_hit_rate",
        "gauge",
        "The prefix cache hit rate.",
        scheduler,
        0.0,
    )
    family(
        "sglang:prompt_tokens_total",
        "counter",
        "Number of prefill tokens processed.",
        name_label,
        stats.prompt_tokens,
    )
    family(
        "sglang:generation_tokens_total",
        "counter",
        "Number of generation tokens processed.",
        name_label,
        stats.generation_tokens,
    )
    family(
        "sglang:num_requests_total",
        "counter",
        "Number of requests processed.",
        name_label,
        stats.succeeded,
    )
    return "\n".join(lines) + "\n"


def render_llamacpp(stats: EngineStats) -> str:
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str, value: float) -> None:
        lines.append(f"# HELP llamacpp:{name} {help_text}")
        lines.append(f"# TYPE llamacpp:{name} {kind}")
        lines.append(f"llamacpp:{name} {cpp_float(value)}")

    family(
        "prompt_tokens_total",
        "counter",
        "Number of prompt tokens processed, excluding cached tokens",
        stats.prompt_tokens,
    )
    family(
        "tokens_predicted_total",
        "counter",
        "Number of generation tokens processed",
        stats.generation_tokens,
    )
    family(
        "requests_processing",
        "gauge",
        "Number of requests processing",
        stats.running,
    )
    family("requests_deferred", "gauge", "Number of requests deferred", stats.waiting)
    family(
        "n_busy_slots_per_decode",
        "gauge",
        "Average number of busy slots per llama_decode() call",
        stats.running,
    )
    return "\n".join(lines) + "\n"
