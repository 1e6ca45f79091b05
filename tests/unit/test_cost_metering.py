"""The metering arithmetic (metering/ledger.py), its config (config/cost.py) and the token
counters read off the engines' metrics (engine_metrics.exposition)."""

from __future__ import annotations

import contextlib
import http.server
import io
import json
import re
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from openmodel import cli
from openmodel.config import ConfigError, parse_config
from openmodel.config.cost import CostConfig, parse_cost
from openmodel.engine_metrics.exposition import QueueReading, read_queue
from openmodel.engines import engine_for
from openmodel.gateway.metrics import GatewayMetrics
from openmodel.metering import dashboard, report
from openmodel.metering.ledger import Holding, Ledger, PodSample, Totals, hourly_cost
from openmodel.metering.metrics import MeteringMetrics
from openmodel.telemetry import Telemetry

REPO = Path(__file__).resolve().parents[2]
H100 = "nvidia-h100-80gb"
PRICES = CostConfig(currency="EUR", gpu_hour_prices={H100: 3.6}, cpu_core_hour_price=0.036)
KEY = ("team-a", "llama")


def pod(uid: str, started: float, gpus: int = 8, **reading: float | bool | None) -> PodSample:
    return PodSample(uid=uid, gpus=gpus, started=started, **reading)  # type: ignore[arg-type]


def observe(ledger: Ledger, now: float, *pods: PodSample) -> Totals:
    return ledger.observe(now, {KEY: Holding(H100, pods)}, PRICES)[KEY]


def test_a_pod_counts_from_its_start_then_poll_to_poll() -> None:
    ledger = Ledger()
    first = observe(ledger, 1000.0, pod("a", started=990.0))
    assert first.gpu_seconds == 8 * 10
    second = observe(ledger, 1015.0, pod("a", started=990.0))
    assert second.gpu_seconds == 8 * 15
    assert ledger.totals[KEY].gpu_seconds == 8 * 25
    # 3.6 per GPU-hour is 0.001 per GPU-second.
    assert ledger.totals[KEY].cost == pytest.approx(8 * 25 * 0.001)


def test_a_pod_first_seen_after_a_poll_counts_from_that_poll_or_its_start() -> None:
    ledger = Ledger()
    observe(ledger, 1000.0)
    late = observe(ledger, 1015.0, pod("early", started=900.0), pod("new", started=1010.0))
    assert late.gpu_seconds == 8 * 15 + 8 * 5


def test_scaled_to_zero_holds_nothing_and_keeps_its_totals() -> None:
    ledger = Ledger()
    observe(ledger, 1000.0, pod("a", started=1000.0 - 60))
    at_zero = observe(ledger, 1015.0)
    assert at_zero.is_zero()
    assert ledger.totals[KEY].gpu_seconds == 8 * 60


def test_busy_time_is_the_intervals_that_end_busy() -> None:
    ledger = Ledger()
    observe(ledger, 1000.0, pod("a", started=1000.0, busy=False))
    observe(ledger, 1010.0, pod("a", started=1000.0, busy=True))
    observe(ledger, 1020.0, pod("a", started=1000.0, busy=None))
    totals = ledger.totals[KEY]
    assert (totals.gpu_seconds, totals.busy_gpu_seconds) == (8 * 20, 8 * 10)


def test_token_counters_add_their_growth_and_survive_an_engine_restart() -> None:
    ledger = Ledger()
    added = [
        observe(ledger, t, pod("a", 0.0, prompt_tokens=p, generation_tokens=g))
        for t, p, g in [(10, 100, 40), (20, 150, 90), (30, 20, 5), (40, 30, None), (50, 45, 7)]
    ]
    # First sight: all it served. Then growth. 150 -> 20: the engine restarted in its pod,
    # all 20 are new. An unread counter adds nothing and keeps the last value for later.
    assert [a.prompt_tokens for a in added] == [100, 50, 20, 10, 15]
    assert [a.generation_tokens for a in added] == [40, 50, 5, 0, 2]


def test_a_vanished_pod_takes_its_counters_and_a_new_one_counts_from_zero() -> None:
    ledger = Ledger()
    observe(ledger, 10, pod("a", 0.0, prompt_tokens=100.0, generation_tokens=10.0))
    observe(ledger, 20)  # a is gone: what it served after t=10 is the one loss
    back = observe(ledger, 30, pod("b", 25.0, prompt_tokens=7.0, generation_tokens=3.0))
    assert (back.prompt_tokens, back.generation_tokens) == (7, 3)
    assert "a" not in ledger.counters


def test_the_checkpoint_lets_a_new_leader_go_on_without_loss_for_running_pods() -> None:
    straight = Ledger()
    interrupted = Ledger()
    polls = [(100.0, 10.0, 4.0), (115.0, 30.0, 9.0), (130.0, 55.0, 20.0), (145.0, 80.0, 31.0)]
    for i, (now, p, g) in enumerate(polls):
        sample = pod("a", 50.0, prompt_tokens=p, generation_tokens=g)
        observe(straight, now, sample)
        if i == 1:
            saved = json.loads(json.dumps(interrupted.checkpoint()))
            interrupted = Ledger.restored(saved)  # the operator restarted here
        if i == 2:
            continue  # the new leader's first poll comes a poll later
        observe(interrupted, now, sample)
    assert interrupted.totals[KEY] == straight.totals[KEY]


def test_a_checkpoint_of_another_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        Ledger.restored({"version": 99})


def test_cpu_engines_are_counted_in_core_and_memory_time() -> None:
    ledger = Ledger()
    cpu_pod = PodSample(uid="c", gpus=0, started=0.0, cpu_cores=4.0, memory_gib=16.0)
    added = ledger.observe(100.0, {KEY: Holding("cpu", (cpu_pod,))}, PRICES)[KEY]
    assert (added.gpu_seconds, added.cpu_core_seconds, added.memory_gib_seconds) == (0, 400, 1600)
    # No memory price set: only the cores cost.
    assert added.cost == pytest.approx(400 * 0.036 / 3600)


def test_an_accelerator_without_a_price_is_metered_but_costs_nothing() -> None:
    ledger = Ledger()
    added = ledger.observe(100.0, {KEY: Holding("nvidia-l4", (pod("a", 0.0),))}, PRICES)[KEY]
    assert (added.gpu_seconds, added.cost) == (800, 0)


def test_hourly_cost_is_what_the_pods_hold_now() -> None:
    holding = Holding(H100, (pod("a", 0.0), pod("b", 0.0, gpus=4)))
    assert hourly_cost(holding, PRICES) == pytest.approx(12 * 3.6)


def test_the_metrics_show_deltas_and_forget_a_deleted_model() -> None:
    registry = CollectorRegistry()
    metrics = MeteringMetrics(registry)
    metrics.add(KEY, H100, Totals(gpu_seconds=80.0, prompt_tokens=5.0, cost=0.08), "EUR")
    labels = {"namespace": "team-a", "name": "llama", "accelerator": H100}
    assert registry.get_sample_value("openmodel_gpu_seconds_total", labels) == 80.0
    cost_labels = {"namespace": "team-a", "name": "llama", "currency": "EUR"}
    assert registry.get_sample_value("openmodel_cost_total", cost_labels) == 0.08
    metrics.forget(KEY, H100, "EUR")
    assert registry.get_sample_value("openmodel_gpu_seconds_total", labels) is None


def test_cost_config_reads_prices_and_refuses_nonsense() -> None:
    config = parse_config(
        {"cost": {"currency": "EUR", "gpuHourPrices": {H100: 2}, "checkpointSeconds": 120}}
    )
    assert config.cost.gpu_hour_price(H100) == 2.0
    assert config.cost.gpu_hour_price("nvidia-l4") is None
    assert config.cost.checkpoint_seconds == 120.0
    refusals = [
        ({"gpuHourPrices": {H100: -1}}, "gpuHourPrices.nvidia-h100-80gb must be a number >= 0"),
        ({"gpuHourPrices": [1]}, "must map accelerator names"),
        ({"currency": "US Dollar"}, "short unit name"),
        ({"pollSeconds": 30, "checkpointSeconds": 10}, "checkpointSeconds must be a number >= 30"),
        ({"price": 1}, "unknown key"),
    ]
    for raw, message in refusals:
        with pytest.raises(ConfigError, match=message):
            parse_cost(raw)


VLLM_BODY = """# HELP vllm:num_requests_waiting waiting
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{model_name="m"} 0.0
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="m"} 2.0
# HELP vllm:prompt_tokens Number of prefill tokens processed.
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{model_name="m"} 1234.0
# TYPE vllm:generation_tokens counter
vllm:generation_tokens_total{model_name="m"} 567.0
"""

TGI_BODY = """# TYPE tgi_queue_size gauge
tgi_queue_size 1
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="+Inf"} 3
tgi_request_input_length_sum 300
tgi_request_input_length_count 3
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_sum 42
tgi_request_generated_tokens_count 3
"""


def test_the_engines_token_counters_are_read_beside_the_queue() -> None:
    assert read_queue(VLLM_BODY, engine_for("vllm").metric_names) == QueueReading(
        waiting=0.0, running=2.0, prompt_tokens=1234.0, generation_tokens=567.0
    )
    tgi = read_queue(TGI_BODY, engine_for("tgi").metric_names)
    assert isinstance(tgi, QueueReading)
    assert (tgi.prompt_tokens, tgi.generation_tokens) == (300.0, 42.0)


def test_missing_token_counters_do_not_block_the_queue_reading() -> None:
    body = "# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting 3\n"
    reading = read_queue(body, engine_for("vllm").metric_names)
    assert reading == QueueReading(waiting=3.0)


def _exposition() -> str:
    registry = CollectorRegistry()
    metrics = MeteringMetrics(registry)
    # 2 GPU-hours, half busy, 3 million prompt and 1 million generated tokens, 7.2 EUR.
    delta = Totals(
        gpu_seconds=7200.0,
        busy_gpu_seconds=3600.0,
        prompt_tokens=3e6,
        generation_tokens=1e6,
        cost=7.2,
    )
    metrics.add(KEY, H100, delta, "EUR")
    metrics.set_rate(KEY, 3.6, "EUR")
    metrics.add(("team-b", "qwen"), H100, Totals(gpu_seconds=3600.0, cost=3.6), "EUR")
    return generate_latest(registry).decode()


def test_the_report_reads_the_operators_own_counters() -> None:
    usages = report.usage_from_exposition(_exposition())
    usage = usages[KEY]
    assert (usage.gpu_hours, usage.utilisation, usage.tokens) == (2.0, 0.5, 4e6)
    assert usage.tokens_per_gpu_hour == 2e6
    assert usage.cost_per_million_tokens == pytest.approx(7.2 / 4)
    assert usage.accelerators == {H100}
    assert usages[("team-b", "qwen")].cost_per_million_tokens is None  # nothing served


def test_the_break_even_against_an_api_is_where_the_monthly_costs_meet() -> None:
    usage = report.usage_from_exposition(_exposition())[KEY]
    api = report.ApiPrices(prompt_per_million=0.5, generation_per_million=1.5)
    assert api.cost_of(usage) == pytest.approx(3 * 0.5 + 1 * 1.5)
    # Per token at this mix: 3.0 / 4e6. The fleet: 3.6 an hour, 730 hours a month.
    expected = 3.6 * 730 / (3.0 / 4e6)
    assert api.break_even_tokens_per_month(usage) == pytest.approx(expected)


def test_the_report_over_a_period_reads_prometheus_increases() -> None:
    asked: list[str] = []

    def query(promql: str) -> list[tuple[dict[str, str], float]]:
        asked.append(promql)
        labels = {"namespace": "team-a", "name": "llama", "accelerator": H100}
        value = {"openmodel_gpu_seconds_total": 36000.0, "openmodel_cost_total": 36.0}
        return [(labels, v) for series, v in value.items() if series in promql]

    usages = report.usage_from_prometheus(query, "1d", 24.0)
    assert usages[KEY].gpu_hours == 10.0
    assert usages[KEY].cost_per_hour == 1.5
    assert "increase(openmodel_cost_total[1d])" in " ".join(asked)


def test_openmodel_cost_prints_the_table_from_the_metrics_url(tmp_path: Path) -> None:
    body = _exposition().encode()

    class Metrics(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Metrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps({"cost": {"currency": "EUR", "gpuHourPrices": {"nvidia-l4": 1}}}))
    out = io.StringIO()
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        argv = [
            "--config",
            str(config),
            "cost",
            "--metrics-url",
            url,
            "--compare-api",
            "0.5",
            "1.5",
        ]
        assert cli.main(argv, out=out) == 0
    finally:
        server.shutdown()
    lines = out.getvalue().splitlines()
    row = next(line for line in lines if line.startswith("team-a/llama"))
    assert row.split()[1:5] == ["2.00", "50%", "7.20", "3.60"]
    assert row.split()[-3:] == ["1.80", "3.00", "3504.0M"]
    assert any(line.startswith("team-b (namespace)") for line in lines)
    assert "no price for nvidia-h100-80gb" in lines[-1]


def test_openmodel_cost_says_why_it_cannot_read() -> None:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(["cost", "--prometheus", "http://127.0.0.1:9", "--since", "3x"])
    assert code == 1
    assert "--since must be" in err.getvalue()


def test_every_metric_a_dashboard_query_names_is_one_we_export() -> None:
    registry = CollectorRegistry()
    MeteringMetrics(registry)
    Telemetry.create(registry)
    GatewayMetrics(registry)
    exported: set[str] = set()
    for family in registry.collect():
        exported.add(f"{family.name}_total" if family.type == "counter" else family.name)
    named = {m for query in dashboard.queries() for m in re.findall(r"openmodel_[a-z_]+", query)}
    assert named and named <= exported, named - exported
