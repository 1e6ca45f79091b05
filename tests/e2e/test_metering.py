"""Metering against the real API server (docs/cost.md): an operator of its own (cost poll
1 s, checkpoint 1 s, a price for the H100) serving e2e-cost-* namespaces; KWOK pods,
simulated engines on their IPs.

- GPU-seconds equal the pods' time since their start times the GPUs, within one poll
  (plus the start time's one-second resolution), before and after an operator restart:
  the restart loses nothing for pods that kept running;
- the engines' token counters, as the operator counts them, equal the sum of the
  answers' `usage`;
- an engine restarted inside its pod (its counters from zero), and a scale to zero and
  back, add what was served afterwards and count nothing twice;
- at zero replicas nothing more is counted, the totals stay and the checkpoint is not
  rewritten;
- `openmodel cost` prints the cost per million tokens computed by hand from those.
"""

from __future__ import annotations

import io
import json
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from openmodel import cli
from openmodel.engine_metrics.exposition import parse_exposition
from openmodel.metering.loop import CHECKPOINT_NAME

from harness import Cluster, NotYet, create_namespace, delete_namespace, wait_for
from harness.engine_fleet import EngineFleet
from openmodel_fixtures import (
    GROUP,
    PLURAL,
    SMALL_MODEL_SPEC,
    VERSION,
    OperatorProcess,
    create_md,
    load_example,
    platform_config,
    start_operator,
)

pytestmark = pytest.mark.cluster
PREFIX = "e2e-cost"
NAME = "metered"
PRICE = 3.6  # per GPU-hour: 0.001 per GPU-second
POLL = 1.0
TIMEOUT = 60.0


@pytest.fixture
def ns(api_client: client.ApiClient) -> Iterator[str]:
    name = create_namespace(api_client, PREFIX)
    yield name
    delete_namespace(api_client, name)


def metering_operator(cluster: Cluster, workdir: Path, ns: str) -> OperatorProcess:
    config = {
        **platform_config(),
        "cost": {
            "currency": "EUR",
            "gpuHourPrices": {"nvidia-h100-80gb": PRICE},
            "pollSeconds": POLL,
            "checkpointSeconds": POLL,
        },
    }
    path = workdir / "cost-platform.yaml"
    path.write_text(yaml.safe_dump(config))
    return start_operator(
        cluster.kubeconfig,
        workdir,
        extra_env={
            "OPENMODEL_NAMESPACES": f"{PREFIX}-*",
            "OPENMODEL_CONFIG": str(path),
            "OPENMODEL_POD_NAMESPACE": ns,  # where the checkpoint goes
        },
        name="operator-cost",
    )


def series(op: OperatorProcess, ns: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{op.metrics_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, float] = {}
    for sample in parse_exposition(text).samples:
        if sample.label("namespace") == ns and sample.label("name") == NAME:
            found[sample.name] = found.get(sample.name, 0.0) + sample.value
    return found


def held_gpu_seconds(api_client: client.ApiClient, ns: str, now: float) -> float:
    """What the pods' start times say the model has held until `now` (one GPU each)."""
    pods = client.CoreV1Api(api_client).list_namespaced_pod(ns).items
    return sum(now - p.status.start_time.timestamp() for p in pods if p.status.start_time)


def complete(url: str, prompt: str, max_tokens: int) -> dict[str, int]:
    body = json.dumps({"model": NAME, "prompt": prompt, "max_tokens": max_tokens}).encode()
    request = urllib.request.Request(
        f"{url}/v1/completions", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        usage: dict[str, int] = json.loads(response.read())["usage"]
    return usage


def test_gpu_seconds_tokens_and_cost_as_the_world_says(
    api_client: client.ApiClient, cluster: Cluster, crd: None, ns: str, tmp_path: Path
) -> None:
    op = metering_operator(cluster, tmp_path, ns)
    fleet: EngineFleet | None = None
    try:
        md = load_example("llama70b-awq.yaml", ns, **SMALL_MODEL_SPEC, replicas=2)
        md["metadata"]["name"] = NAME
        md["spec"].pop("servedModelName")
        create_md(api_client, md)
        fleet = EngineFleet(api_client, ns, NAME, slots=4, service_time=0.01).start()

        def two_engines() -> list[str] | NotYet:
            urls = fleet.urls() if fleet else []
            return urls if len(urls) == 2 else NotYet(urls)

        urls = wait_for(two_engines, TIMEOUT, "two simulated engines on the pods' IPs")
        answers = [complete(urls[i % 2], "word " * (5 + i), 3 + i) for i in range(10)]
        prompt = sum(a["prompt_tokens"] for a in answers)
        generated = sum(a["completion_tokens"] for a in answers)

        def counted_tokens() -> dict[str, float] | NotYet:
            found = series(op, ns)
            tokens = (
                found.get("openmodel_engine_prompt_tokens_total"),
                found.get("openmodel_engine_generation_tokens_total"),
            )
            return found if tokens == (prompt, generated) else NotYet((tokens, prompt, generated))

        wait_for(counted_tokens, TIMEOUT, "the engines' tokens counted")

        # An engine restarts inside its pod: its counters start again from zero; what it
        # serves afterwards is added, nothing is counted twice.
        engine_ip = urls[0].split("//", 1)[1].rsplit(":", 1)[0]
        fleet.restart_engine(engine_ip)
        after_restart = [complete(urls[0], "word " * 4, 2) for _ in range(3)]
        prompt += sum(a["prompt_tokens"] for a in after_restart)
        generated += sum(a["completion_tokens"] for a in after_restart)
        wait_for(counted_tokens, TIMEOUT, "the restarted engine's tokens added once")

        def gpu_time_within_one_poll(operator: OperatorProcess) -> None:
            before = datetime.now().timestamp()
            found = series(operator, ns)
            after = datetime.now().timestamp()
            counted = found["openmodel_gpu_seconds_total"]
            # Up to the last poll (at most one poll ago, plus the scrape's own time);
            # start times are whole seconds.
            lowest = held_gpu_seconds(api_client, ns, before) - 2 * (POLL + 1.0)
            highest = held_gpu_seconds(api_client, ns, after) + 2 * 1.0
            assert lowest <= counted <= highest, (lowest, counted, highest)
            assert found["openmodel_cost_total"] == pytest.approx(counted * PRICE / 3600)

        gpu_time_within_one_poll(op)

        # A restart: the pods keep running; the new operator goes on from the checkpoint.
        checkpoint = client.CoreV1Api(api_client).read_namespaced_config_map(CHECKPOINT_NAME, ns)
        assert "ledger.json" in (checkpoint.data or {})
        op.stop()
        op = metering_operator(cluster, tmp_path, ns)
        wait_for(counted_tokens, TIMEOUT, "the tokens again after the restart (no double count)")
        gpu_time_within_one_poll(op)

        # `openmodel cost` on the operator's own metrics: cost per million tokens by hand.
        found = series(op, ns)
        by_hand = found["openmodel_cost_total"] / (prompt + generated) * 1e6
        out = io.StringIO()
        assert cli.main(["cost", "--metrics-url", f"{op.metrics_url}/metrics"], out=out) == 0
        row = next(line for line in out.getvalue().splitlines() if line.startswith(f"{ns}/"))
        printed = float(row.split()[-1])
        # The operator counted on between the two reads; the table rounds to 2 decimals.
        assert printed == pytest.approx(by_hand, rel=0.05, abs=0.01), (row, by_hand)

        # At zero: nothing more is held, the totals stay.
        client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, NAME, {"spec": {"replicas": 0}}
        )

        def no_pods() -> bool | NotYet:
            pods = client.CoreV1Api(api_client).list_namespaced_pod(ns).items
            return not pods or NotYet([p.metadata.name for p in pods])

        wait_for(no_pods, TIMEOUT, "the pods gone at zero replicas")

        def settled() -> float | NotYet:
            first = series(op, ns)["openmodel_gpu_seconds_total"]
            per_hour = series(op, ns).get("openmodel_cost_per_hour")
            return first if per_hour == 0 else NotYet(per_hour)

        at_zero = wait_for(settled, TIMEOUT, "a cost per hour of 0 at zero replicas")
        core = client.CoreV1Api(api_client)
        saved = core.read_namespaced_config_map(CHECKPOINT_NAME, ns).metadata.resource_version
        polls = polls_done(op)

        def three_more_polls() -> float | NotYet:
            done = polls_done(op)
            return done if done >= polls + 3 else NotYet(done)

        wait_for(three_more_polls, TIMEOUT, "three more polls of the metering loop")
        assert series(op, ns)["openmodel_gpu_seconds_total"] == at_zero
        # Nothing counted, nothing saved: an idle model costs the API server no writes.
        again = core.read_namespaced_config_map(CHECKPOINT_NAME, ns).metadata.resource_version
        assert again == saved

        # And back: new pods, new engines; their tokens are added to the totals.
        client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            GROUP, VERSION, ns, PLURAL, NAME, {"spec": {"replicas": 1}}
        )

        def one_engine() -> list[str] | NotYet:
            urls = fleet.urls() if fleet else []
            return urls if len(urls) == 1 else NotYet(urls)

        (back,) = wait_for(one_engine, TIMEOUT, "one simulated engine on the new pod")
        later = [complete(back, "word " * 6, 3) for _ in range(2)]
        prompt += sum(a["prompt_tokens"] for a in later)
        generated += sum(a["completion_tokens"] for a in later)
        wait_for(counted_tokens, TIMEOUT, "the tokens of the model back from zero added")
    finally:
        if fleet is not None:
            fleet.stop()
        op.stop()


def polls_done(op: OperatorProcess) -> float:
    with urllib.request.urlopen(f"{op.metrics_url}/metrics", timeout=5) as response:
        exposition = parse_exposition(response.read().decode())
    return sum(exposition.values("openmodel_metering_polls_total"))
