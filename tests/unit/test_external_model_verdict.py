"""The operator's verdict on an ExternalModel (external_models/verdict.py): Ready, or
InvalidSpec / NameTaken (oldest keeps the name) / KeyNotGranted, and its status."""

from __future__ import annotations

from typing import Any

from openmodel.api import SecretKeyRef, SpecError
from openmodel.external_model import ExternalModel, parse_external_model
from openmodel.external_models.verdict import (
    EGRESS_NOT_ALLOWED,
    INVALID_SPEC,
    KEY_NOT_GRANTED,
    NAME_TAKEN,
    READY,
    Verdict,
    desired_status,
    invalid,
    judge,
    model_deployment_names,
    name_claims,
    parse,
    status_changed,
    transition,
)

GATEWAY = ("openmodel-system", "openmodel-gateway")


def xm(
    name: str = "gpt",
    namespace: str = "team-a",
    created: str = "2026-01-02T00:00:00Z",
    served: str | None = None,
    secret: str | None = "openai-key",
) -> dict[str, Any]:
    spec: dict[str, Any] = {"baseURL": "https://api.example.com/v1", "upstreamModel": "gpt-4o"}
    if served:
        spec["servedModelName"] = served
    if secret:
        spec["apiKeySecretRef"] = {"name": secret, "key": "token"}
    return {
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created,
                     "generation": 3},
        "spec": spec,
    }  # fmt: skip


def md(name: str, created: str, served: str | None = None, adapters: tuple[str, ...] = ()):
    spec: dict[str, Any] = {"model": "Qwen/Qwen2.5-0.5B-Instruct"}
    if served:
        spec["servedModelName"] = served
    if adapters:
        spec["adapters"] = [{"name": a, "source": "org/" + a} for a in adapters]
    return {"metadata": {"name": name, "namespace": "team-b", "creationTimestamp": created},
            "spec": spec}  # fmt: skip


def verdict_of(body: dict[str, Any], others: list[dict[str, Any]] = (), mds=(), granted=True):  # type: ignore[assignment]
    asked: list[tuple[str, str]] = []

    def may_read(model: ExternalModel, secret: SecretKeyRef) -> bool:
        asked.append((model.namespace, secret.name))
        return granted

    bodies = [body, *others]
    valid = [(b, parse_external_model(b)) for b in bodies]
    claims = name_claims(mds, valid)
    return judge(parse_external_model(body), claims, may_read, GATEWAY), asked


def test_ready_when_the_name_is_its_own_and_the_gateway_may_read_the_key() -> None:
    verdict, asked = verdict_of(xm())
    assert verdict == Verdict(True, READY, "served as 'gpt'")
    assert asked == [("team-a", "openai-key")]


def test_no_key_no_review() -> None:
    verdict, asked = verdict_of(xm(secret=None))
    assert verdict.ready and "no key" in verdict.message and asked == []


def test_key_not_granted_names_the_account_and_the_secret_never_more() -> None:
    verdict, _ = verdict_of(xm(), granted=False)
    assert not verdict.ready and verdict.reason == KEY_NOT_GRANTED
    assert "openmodel-system/openmodel-gateway" in verdict.message
    assert "'openai-key'" in verdict.message and "team-a" in verdict.message
    assert "token" not in verdict.message  # the key's name inside the Secret: not needed


def test_an_older_model_deployment_keeps_the_name() -> None:
    older = md("qwen", "2026-01-01T00:00:00Z", served="gpt")
    verdict, asked = verdict_of(xm(), mds=[older])
    assert verdict.reason == NAME_TAKEN and "ModelDeployment team-b/qwen" in verdict.message
    assert asked == []  # no review for a name it does not serve
    younger = md("qwen", "2026-02-01T00:00:00Z", served="gpt")
    assert verdict_of(xm(), mds=[younger])[0].ready


def test_an_adapter_name_is_taken_too() -> None:
    verdict, _ = verdict_of(xm(), mds=[md("qwen", "2025-01-01T00:00:00Z", adapters=("gpt",))])
    assert verdict.reason == NAME_TAKEN


def test_between_external_models_the_oldest_wins_then_namespace_and_name() -> None:
    first = xm("a", "team-x", "2026-01-01T00:00:00Z", served="gpt")
    second = xm("b", "team-y", "2026-01-03T00:00:00Z", served="gpt")
    assert verdict_of(first, [second])[0].ready
    taken, _ = verdict_of(second, [first])
    assert taken.reason == NAME_TAKEN and "ExternalModel team-x/a" in taken.message
    same_time = xm("c", "team-a", "2026-01-01T00:00:00Z", served="gpt")
    assert verdict_of(same_time, [first])[0].ready  # team-a sorts before team-x


def test_a_model_deployment_being_deleted_claims_nothing() -> None:
    leaving = md("qwen", "2025-01-01T00:00:00Z", served="gpt")
    leaving["metadata"]["deletionTimestamp"] = "2026-03-01T00:00:00Z"
    assert verdict_of(xm(), mds=[leaving])[0].ready


def test_served_names_read_as_the_gateway_reads_them() -> None:
    assert model_deployment_names(md("q", "t")) == {"Qwen/Qwen2.5-0.5B-Instruct"}
    assert model_deployment_names(md("q", "t", served="s", adapters=("a1",))) == {"s", "a1"}
    pvc = {"spec": {"model": "pvc://weights/llama/"}}
    assert model_deployment_names(pvc) == {"llama"}
    assert model_deployment_names({"spec": "nonsense"}) == set()


def test_invalid_spec_names_the_field() -> None:
    body = xm()
    body["spec"]["baseURL"] = "ftp://x"
    error = parse(body)
    assert isinstance(error, SpecError)
    verdict = invalid(error)
    assert verdict.reason == INVALID_SPEC and verdict.message.startswith("spec.baseURL:")


def test_status_carries_generation_reason_and_keeps_the_transition_time() -> None:
    ready = Verdict(True, READY, "served as 'gpt'")
    status = desired_status(ready, 3, None, "T1")
    assert status["observedGeneration"] == 3 and status["reason"] == READY
    (cond,) = status["conditions"]
    assert cond == {
        "type": "Ready", "status": "True", "reason": READY, "message": "served as 'gpt'",
        "observedGeneration": 3, "lastTransitionTime": "T1",
    }  # fmt: skip
    assert status_changed(status, None) and not status_changed(status, status)
    assert not transition(ready, status)
    again = desired_status(ready, 4, status, "T2")
    assert again["conditions"][0]["lastTransitionTime"] == "T1"  # still True
    assert status_changed(again, status)
    refused = Verdict(False, KEY_NOT_GRANTED, "m")
    flipped = desired_status(refused, 4, status, "T3")
    assert flipped["conditions"][0]["lastTransitionTime"] == "T3"
    assert transition(refused, status) and status_changed(flipped, status)


def test_a_team_may_not_open_the_inside_the_platform_may() -> None:
    team = xm()
    team["spec"]["egress"] = {"cidrs": ["1.1.1.0/24", "169.254.169.254/32"]}
    verdict, asked = verdict_of(team)
    assert (verdict.ready, verdict.reason) == (False, EGRESS_NOT_ALLOWED)
    assert "169.254.169.254/32" in verdict.message and "1.1.1.0/24" not in verdict.message
    assert asked == []  # refused before any review
    platform = xm(namespace=GATEWAY[0])
    platform["spec"]["egress"] = {"cidrs": ["10.0.0.0/8"]}
    assert verdict_of(platform)[0].ready
