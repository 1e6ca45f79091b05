"""The config.json resolver: the Hub client against the local stand-in (200, 401, 404,
timeout), the store's cache and back-off, and what a plan and the status say while a
resolution is pending or after it failed."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import fake_hub
import pytest

from openmodel.api import SpecError
from openmodel.config import ConfigError, PlatformConfig, parse_config
from openmodel.config.model_resolver import ModelResolverConfig
from openmodel.engines import parse_model_deployment
from openmodel.model_resolver.hub import HubClient
from openmodel.model_resolver.loop import resolve_once
from openmodel.model_resolver.state import Failed, ModelRef, Pending, Resolved
from openmodel.model_resolver.store import ModelConfigStore, backoff_seconds, model_ref_for
from openmodel.problems import Problem
from openmodel.reconcile.plan import make_plan
from openmodel.reconcile.status import Observation, desired_conditions

HEAD = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "m", "namespace": "n"},
}


@pytest.fixture(scope="module")
def hub() -> Iterator[fake_hub.FakeHub]:
    server = fake_hub.FakeHub().start()
    yield server
    server.stop()


def resolve(hub: fake_hub.FakeHub, repo: str, timeout: float = 5.0) -> object:
    client = HubClient(hub.url, ModelResolverConfig(timeout_seconds=timeout))
    return asyncio.run(resolve_once(client, ModelRef(repo), 0))


def test_a_repo_resolves_pinned_to_its_commit(hub: fake_hub.FakeHub) -> None:
    state = resolve(hub, "openai/gpt-oss-120b")
    assert isinstance(state, Resolved)
    assert state.sha == fake_hub.sha_of("openai/gpt-oss-120b")
    assert state.checkpoint.quantization is not None
    assert f"/openai/gpt-oss-120b/resolve/{state.sha}/config.json" in hub.requests


@pytest.mark.parametrize(
    ("repo", "reason", "timeout"),
    [
        (fake_hub.UNAUTHORIZED_REPO, "ModelConfigUnauthorized", 5.0),
        (fake_hub.MISSING_REPO, "ModelConfigNotFound", 5.0),
        (fake_hub.SLOW_REPO, "ModelConfigTimeout", 0.3),
    ],
)
def test_failures_have_their_reason(
    hub: fake_hub.FakeHub, repo: str, reason: str, timeout: float
) -> None:
    state = resolve(hub, repo, timeout)
    assert isinstance(state, Failed) and state.reason == reason, state
    assert state.attempts == 1


def test_hf_endpoint_wins_and_the_key_is_checked() -> None:
    settings = ModelResolverConfig(endpoint="http://configured:1/")
    assert settings.effective_endpoint({}) == "http://configured:1"
    assert settings.effective_endpoint({"HF_ENDPOINT": "http://env:2"}) == "http://env:2"
    assert ModelResolverConfig().effective_endpoint({}) is None
    config = parse_config({"modelResolver": {"tokenFile": "/t", "timeoutSeconds": 3}})
    assert config.model_resolver.token_file == "/t"
    with pytest.raises(ConfigError, match="modelResolver: unknown"):
        parse_config({"modelResolver": {"token": "x"}})


def test_store_queues_once_backs_off_and_returns_the_waiters() -> None:
    store = ModelConfigStore(ModelResolverConfig(max_backoff_seconds=10, cache_entries=2))
    woken: list[int] = []
    store.set_wake(lambda: woken.append(1))
    ref = ModelRef("acme/m")
    assert isinstance(store.lookup(ref, ("ns", "a")), Pending)
    assert isinstance(store.lookup(ref, ("ns", "b")), Pending)
    assert woken == [1] and store.due(0) == [ref]
    assert store.record(ref, Failed(ref, "ModelConfigTimeout", "slow"), now=100) == {
        ("ns", "a"),
        ("ns", "b"),
    }
    assert store.due(101) == [] and store.due(102) == [ref]
    assert [backoff_seconds(n, 10) for n in (1, 2, 3, 4, 5)] == [2, 4, 8, 10, 10]
    store.lookup(ModelRef("x/1"))
    store.lookup(ModelRef("x/2"))  # evicts acme/m, the least recently used
    assert ref not in store.due(1000)


def test_model_ref_only_when_sizing_needs_the_config() -> None:
    def body(**spec: object) -> object:
        base = {"model": "acme/m", "gpu": {"type": "nvidia-l4"}, **spec}
        return parse_model_deployment({**HEAD, "spec": base}).spec

    assert model_ref_for(body()) == ModelRef("acme/m", "main")  # type: ignore[arg-type]
    assert model_ref_for(body(args=["--revision", "v2"])) == ModelRef("acme/m", "v2")  # type: ignore[arg-type]
    assert model_ref_for(body(modelInfo={"parametersBillions": 7})) is None  # type: ignore[arg-type]
    assert model_ref_for(body(model="pvc://weights/m")) is None  # type: ignore[arg-type]


def md(count: int | None = None) -> object:
    gpu: dict[str, object] = {"type": "nvidia-h100-80gb"}
    if count is not None:
        gpu["count"] = count
    return parse_model_deployment({**HEAD, "spec": {"model": "acme/m", "gpu": gpu}})


def test_plan_waits_then_reports_the_failure_or_sizes(hub: fake_hub.FakeHub) -> None:
    config = PlatformConfig()
    ref = ModelRef("acme/m")
    with pytest.raises(SpecError) as err:
        make_plan(md(), config, None, model_config=Pending(ref))  # type: ignore[arg-type]
    assert err.value.reason == "SizingPending"
    with pytest.raises(SpecError) as err:
        make_plan(md(), config, None, model_config=Failed(ref, "ModelConfigNotFound", "404"))  # type: ignore[arg-type]
    assert err.value.reason == "ModelConfigNotFound" and "could not be read" in err.value.message
    # With a stated count the failure does not block; the note says why memory is unchecked.
    plan = make_plan(md(2), config, None, model_config=Failed(ref, "ModelConfigTimeout", "slow"))  # type: ignore[arg-type]
    assert plan.gpu.count == 2 and plan.gpu.estimate is None
    resolved = resolve(hub, fake_hub.FINE_TUNE_REPO)
    assert isinstance(resolved, Resolved)
    plan = make_plan(md(), config, None, model_config=resolved)  # type: ignore[arg-type]
    assert plan.gpu.count == 1 and plan.gpu.estimate is not None
    assert "config.json" in plan.gpu.estimate["summary"]


def test_sizing_pending_is_not_degraded_and_keeps_ready_honest() -> None:
    obs = Observation(
        generation=1, name="m", label_selector="x", endpoint=None, desired_replicas=None,
        deployment=None, problem=Problem("SizingPending", "reading the config.json of acme/m"),
    )  # fmt: skip
    by_type = {c["type"]: c for c in desired_conditions(obs)}
    assert by_type["Ready"]["status"] == "False" and by_type["Ready"]["reason"] == "SizingPending"
    assert by_type["Degraded"]["status"] == "False"
    assert by_type["Progressing"]["reason"] == "SizingPending"


def test_an_answer_asks_the_queue_for_the_waiting_passes(
    hub: fake_hub.FakeHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resolver runs no pass itself: it records the answer, then the ModelDeployments
    that waited for it are added to the operator's queue (asked by the resolver, in the
    first line: their create waited for it), where the workers take them."""
    from operator_parts import new_operator

    from openmodel.controller.queue import Asker, Line, Taken

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    config = PlatformConfig(model_resolver=ModelResolverConfig(endpoint=hub.url))
    store = ModelConfigStore(config.model_resolver)
    operator = new_operator(config, store)
    assert operator.resolver is not None
    ref = ModelRef("openai/gpt-oss-120b")
    store.lookup(ref, ("team-a", "b"))
    store.lookup(ref, ("team-a", "a"))

    async def scenario() -> list[Taken]:
        resolver = asyncio.create_task(operator.resolver.run_forever())  # type: ignore[union-attr]
        try:
            first = await asyncio.wait_for(operator.queue.take(), timeout=20)
            operator.queue.add(("team-a", "edited"), Line.CHILD)
            return [first, await operator.queue.take(), await operator.queue.take()]
        finally:
            resolver.cancel()

    assert asyncio.run(scenario()) == [
        (("team-a", "a"), Line.SPEC, Asker.RESOLVER),
        (("team-a", "b"), Line.SPEC, Asker.RESOLVER),
        (("team-a", "edited"), Line.CHILD, Asker.CHILD),
    ]
    assert isinstance(store.lookup(ref), Resolved)
