"""Prefix affinity with bounded load (gateway/affinity.py) and the balancer's policies."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest
from test_gateway import pod, run, running_gateway

from openmodel.config import ConfigError, parse_config
from openmodel.gateway.affinity import affinity_key, load_bound, prompt_prefix
from openmodel.gateway.balancer import Balancer
from openmodel.gateway.routes import Backend, Endpoint, RouteTable, backend_from
from openmodel.simulator.server import start_simulator

KEY = ("team-a", "llama")
SYSTEM = "You are a careful assistant for the payroll team. " * 4


def endpoints(n: int) -> list[Endpoint]:
    return [Endpoint(f"pod-{i}", f"10.0.0.{i + 1}", 8000) for i in range(n)]


def chat(user: str, system: str = SYSTEM) -> dict[str, object]:
    return {
        "model": "llama",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
    }


def prefix_balancer(load_factor: float = 1.25) -> Balancer:
    return Balancer(policy="prefix", load_factor=load_factor)


def test_the_prefix_is_what_the_engine_prefills_first() -> None:
    parts = {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    }
    assert prompt_prefix(parts, 100) == "user\nhi\n"
    assert prompt_prefix(chat("what is my tax?"), 20) == ("system\n" + SYSTEM)[:20]
    assert prompt_prefix({"prompt": ["the cat"]}, 5) == "the c"
    assert prompt_prefix({"input": ["a", "b"]}, 5) is None  # embeddings of several inputs
    # An adapter's cache is its own.
    assert affinity_key(chat("x"), None, 64) != affinity_key(chat("x"), "payroll-lora", 64)
    # Within the prefix length, later turns do not change the key; a new system prompt does.
    assert affinity_key(chat("one"), None, 64) == affinity_key(chat("two"), None, 64)
    assert affinity_key(chat("one"), None, 64) != affinity_key(chat("one", "Be terse."), None, 64)


def test_requests_sharing_a_prefix_go_to_one_pod_while_it_has_room() -> None:
    balancer = prefix_balancer()
    pods = endpoints(4)
    key = affinity_key(chat("hello"), None, 512)
    chosen = set()
    for _ in range(20):  # one at a time: the pod never exceeds the bound
        pod = balancer.pick(KEY, pods, affinity=key)
        assert pod is not None
        chosen.add(pod.pod)
        balancer.started(KEY, pod.pod)
        balancer.finished(KEY, pod.pod)
    assert len(chosen) == 1


def test_no_pod_takes_more_than_the_bound_under_concurrent_load() -> None:
    balancer = prefix_balancer(load_factor=1.25)
    pods = endpoints(4)
    key = affinity_key(chat("the same long conversation"), None, 512)
    for _ in range(101):
        loads = [balancer.load(KEY, p.pod) for p in pods]
        bound = load_bound(loads, 1.25)
        pod = balancer.pick(KEY, pods, affinity=key)
        assert pod is not None
        assert balancer.load(KEY, pod.pod) + 1 <= bound
        balancer.started(KEY, pod.pod)
    final = [balancer.load(KEY, p.pod) for p in pods]
    assert max(final) <= math.ceil(1.25 * 101 / 4)
    assert min(final) > 0  # the overflow spread to every pod


def test_distinct_prefixes_spread_and_a_pod_that_leaves_moves_only_its_own() -> None:
    balancer = prefix_balancer()
    rng = random.Random(5)
    keys = [affinity_key(chat(f"{rng.random()}", f"system {i}"), None, 512) for i in range(2000)]
    four, three = endpoints(4), endpoints(4)[:3]

    def owners(pods: list[Endpoint]) -> list[str]:
        out = []
        for key in keys:
            pod = balancer.pick(KEY, pods, affinity=key)
            assert pod is not None
            out.append(pod.pod)
        return out

    before, after = owners(four), owners(three)
    shares = Counter(before)
    assert all(0.15 <= shares[p.pod] / len(keys) <= 0.35 for p in four), shares
    moved = [(b, a) for b, a in zip(before, after, strict=True) if b != a]
    assert moved and all(b == "pod-3" for b, _ in moved)


def test_least_load_ignores_the_prefix_and_requests_without_a_prompt_fall_back() -> None:
    least = Balancer()
    pods = endpoints(2)
    key = affinity_key(chat("hello"), None, 512)
    first = least.pick(KEY, pods, affinity=key)
    assert first is not None
    least.started(KEY, first.pod)
    second = least.pick(KEY, pods, affinity=key)
    assert second is not None and second.pod != first.pod
    prefix = prefix_balancer()
    prefix.started(KEY, "pod-0")
    fallback = prefix.pick(KEY, pods, affinity=None)
    assert fallback is not None and fallback.pod == "pod-1"


def test_the_balancing_config() -> None:
    config = parse_config({"gateway": {"balancing": {"policy": "prefix", "loadFactor": 1.5}}})
    assert config.gateway.balancing.policy == "prefix"
    assert config.gateway.balancing.load_factor == 1.5
    assert config.gateway.balancing.prefix_characters == 512
    assert parse_config({}).gateway.balancing.policy == "prefix"  # the default
    for raw, message in [
        ({"policy": "random"}, "policy must be one of least-load, prefix"),
        ({"loadFactor": 0.9}, "loadFactor must be a number >= 1"),
        ({"prefixCharacters": 0}, "prefixCharacters must be an integer >= 1"),
        ({"prefix": 1}, "unknown key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_config({"gateway": {"balancing": raw}})


def test_a_model_deployments_policy_overrides_the_platforms() -> None:
    pods = endpoints(2)
    key = affinity_key(chat("hello"), None, 512)
    # Under a least-load platform, equal pods take turns; a ModelDeployment on `prefix`
    # keeps its prefix's pod.
    platform_least = Balancer()
    turns = [platform_least.pick(KEY, pods, affinity=key) for _ in range(4)]
    assert len({e.pod for e in turns if e is not None}) == 2
    sticky = [platform_least.pick(KEY, pods, affinity=key, policy="prefix") for _ in range(4)]
    assert len({e.pod for e in sticky if e is not None}) == 1
    # Under a prefix platform, with the prefix's pod busy but within the bound
    # (ceil(1.25 x 2 / 2) = 2), the prefix stays; a ModelDeployment on `least-load`
    # goes to the idle pod.
    platform_prefix = prefix_balancer()
    home = platform_prefix.pick(KEY, pods, affinity=key)
    assert home is not None
    platform_prefix.started(KEY, home.pod)
    assert platform_prefix.pick(KEY, pods, affinity=key) == home
    idle = platform_prefix.pick(KEY, pods, affinity=key, policy="least-load")
    assert idle is not None and idle != home


def test_the_route_carries_the_model_deployments_policy() -> None:
    def body(**spec: object) -> dict[str, object]:
        return {
            "apiVersion": "openmodel.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "llama", "namespace": "team-a"},
            "spec": {"model": "org/llama", "gpu": {"type": "nvidia-l4"}, **spec},
        }

    chosen = backend_from(body(gateway={"balancing": {"policy": "prefix"}}))
    assert chosen is not None and chosen.balancing_policy == "prefix"
    unset = backend_from(body())
    assert unset is not None and unset.balancing_policy is None
    assert backend_from(body(gateway={"balancing": {"policy": "random"}})) is None  # refused


def test_the_gateway_routes_each_model_by_its_own_policy() -> None:
    """A least-load platform; `sticky` chooses `prefix`, `spread` says nothing. The same
    prompt, one request at a time: sticky's all reach one engine, spread's take turns."""

    least_load_platform = parse_config({"gateway": {"balancing": {"policy": "least-load"}}}).gateway

    async def scenario() -> dict[str, list[int]]:
        first = await start_simulator("vllm", "127.0.0.31", 0, service_time=0, model="sticky")
        sims = [first]
        try:
            for host, model in (("127.0.0.32", "sticky"), ("127.0.0.33", "spread"),
                                ("127.0.0.34", "spread")):  # fmt: skip
                sims.append(
                    await start_simulator("vllm", host, first.port, service_time=0, model=model)
                )
            table = RouteTable()
            for name, policy, pair in (("sticky", "prefix", sims[:2]), ("spread", None, sims[2:])):
                served = Backend(
                    key=("team-a", name), served_name=name, adapters=frozenset(), engine="vllm",
                    port=first.port, balancing_policy=policy,
                )  # fmt: skip
                table.put_backend(served, [pod(f"{name}-{i}", s.host) for i, s in enumerate(pair)])
            async with running_gateway(least_load_platform, table) as gw:
                for name in ("sticky", "spread"):
                    for _ in range(6):
                        status, body, _ = await gw.post(
                            "/v1/chat/completions",
                            {**chat("the same question"), "model": name, "max_tokens": 1},
                        )
                        assert status == 200, body
            return {
                "sticky": [s.stats.succeeded for s in sims[:2]],
                "spread": [s.stats.succeeded for s in sims[2:]],
            }
        finally:
            for sim in sims:
                await sim.stop()

    served = run(scenario)
    assert sorted(served["sticky"]) == [0, 6], served
    assert served["spread"] == [3, 3], served
