"""The watch-fed object cache, and a reconcile pass reading from it (kube/cache.py,
reconcile/reconciler.py): no read when the cache answers, a stale copy never written
over a newer object, someone else's child never taken over, rate limit and 429."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest
from fake_api_server import (
    FakeApiServer,
    Key,
    namespace_not_found_error,
    namespace_terminating_error,
)
from kubernetes.client.exceptions import ApiException

from openmodel.config import PlatformConfig
from openmodel.kube import calls as kube
from openmodel.kube.cache import ObjectCache, owner_text
from openmodel.reconcile.reconciler import CHILD_NOT_OWNED, STATUS_ONLY_REAPPLIES, Reconciler

MD: dict[str, Any] = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {
        "name": "m",
        "namespace": "team-a",
        "uid": "u-1",
        "generation": 1,
        "resourceVersion": "10",
    },
    "spec": {"model": "meta-llama/Llama-3.1-8B-Instruct", "gpu": {"type": "nvidia-h100-80gb"}},
}


def body(kind: str, name: str, rv: int, uid: str = "x", **meta: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "resourceVersion": str(rv),
            "uid": uid,
            **meta,
        },
    }


# -- the cache itself ----------------------------------------------------------------


def test_an_older_version_never_replaces_a_newer_one() -> None:
    cache = ObjectCache()
    cache.wrote("Deployment", body("Deployment", "m", 7))
    cache.observe("Deployment", body("Deployment", "m", 5))  # a late watch event
    assert cache.get("Deployment", "team-a", "m")["metadata"]["resourceVersion"] == "7"  # type: ignore[index]
    cache.observe("Deployment", body("Deployment", "m", 9))
    assert cache.get("Deployment", "team-a", "m")["metadata"]["resourceVersion"] == "9"  # type: ignore[index]


def test_a_deletion_of_an_old_incarnation_keeps_the_new_object() -> None:
    cache = ObjectCache()
    cache.observe("Service", body("Service", "m", 20, uid="new"))
    cache.forget("Service", body("Service", "m", 12, uid="old"))
    assert cache.get("Service", "team-a", "m") is not None
    cache.forget("Service", body("Service", "m", 21, uid="new"))
    assert cache.get("Service", "team-a", "m") is None


def test_pods_are_grouped_by_owner_label_and_forgotten() -> None:
    cache = ObjectCache()
    labels = {"labels": {"openmodel.dev/model-deployment": "m"}}
    cache.observe("Pod", body("Pod", "m-1", 3, **labels))
    cache.observe("Pod", body("Pod", "m-2", 4, **labels))
    cache.observe("Pod", body("Pod", "o-1", 5, labels={"openmodel.dev/model-deployment": "o"}))
    assert sorted(p["metadata"]["name"] for p in cache.pods("team-a", "m")) == ["m-1", "m-2"]
    cache.forget("Pod", body("Pod", "m-1", 6, **labels))
    assert [p["metadata"]["name"] for p in cache.pods("team-a", "m")] == ["m-2"]
    assert cache.sizes()["Pod"] == 2


def test_audit_drops_a_missed_deletion_but_not_an_object_newer_than_the_list() -> None:
    cache = ObjectCache()
    cache.observe("Deployment", body("Deployment", "gone", 5))
    cache.observe("Deployment", body("Deployment", "kept", 6))
    cache.observe("Deployment", body("Deployment", "after-list", 30))
    differences = cache.audit("Deployment", [body("Deployment", "kept", 6)], list_version=20)
    assert differences == 1
    assert cache.get("Deployment", "team-a", "gone") is None
    assert cache.get("Deployment", "team-a", "kept") is not None
    assert cache.get("Deployment", "team-a", "after-list") is not None


def test_the_cache_keeps_who_manages_an_object_but_not_the_field_sets() -> None:
    fields = {"f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {}}}}}
    kubectl = {"kubectl.kubernetes.io/last-applied-configuration": '{"spec": "..."}', "a": "b"}
    managed = [
        {"manager": "openmodel", "operation": "Update", "fieldsType": "FieldsV1",
         "fieldsV1": fields, "time": "2026-12-02T00:00:00Z"},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status",
         "fieldsV1": fields},
    ]  # fmt: skip
    cache = ObjectCache()
    original = body("Deployment", "m", 3, managedFields=managed, annotations=kubectl)
    original["spec"] = {"replicas": 1}
    cache.observe("Deployment", original)
    held = cache.get("Deployment", "team-a", "m")
    assert held is not None
    # In order (a JSON patch addresses an entry by its index), without the field sets.
    assert held["metadata"]["managedFields"] == [
        {"manager": "openmodel", "operation": "Update"},
        {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status"},
    ]
    assert held["metadata"]["annotations"] == {"a": "b"}
    assert held["spec"] == {"replicas": 1} and held["metadata"]["resourceVersion"] == "3"
    assert original["metadata"]["managedFields"] == managed  # the event's body untouched


def test_owner_text_names_the_owner_or_says_there_is_none() -> None:
    owned = body(
        "Service", "m", 1, ownerReferences=[{"kind": "ConfigMap", "name": "c", "uid": "abcdef123"}]
    )
    assert owner_text(owned) == "is owned by ConfigMap/c (uid abcdef12)"
    assert owner_text(body("Service", "m", 1)) == "has no owner reference"


# -- a pass over a fake API (counting requests) ------------------------------------------


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeApiServer:
    fake = FakeApiServer().install(monkeypatch)
    fake.objects[("ModelDeployment", "team-a", "m")] = copy.deepcopy(MD)
    return fake


def new_reconciler(api: FakeApiServer) -> Reconciler:
    r = Reconciler(object(), PlatformConfig(), clock=lambda: "2026-12-02T00:00:00Z")  # type: ignore[arg-type]
    r.cache.observe("ModelDeployment", copy.deepcopy(MD))
    return r


def edit_env(md: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    changed = copy.deepcopy(md)
    changed["spec"]["env"] = [{"name": k, "value": v} for k, v in env.items()]
    changed["metadata"]["generation"] += 1
    changed["metadata"]["resourceVersion"] = str(int(changed["metadata"]["resourceVersion"]) + 1)
    return changed


def _pass_after_an_env_edit(api: FakeApiServer, r: Reconciler) -> list[tuple[str, str]]:
    """Put A=1 into the ModelDeployment's env (the watch delivers it) and run the pass,
    which must write the Deployment: the requests it made about the Deployment."""
    md = edit_env(api.objects[("ModelDeployment", "team-a", "m")], {"A": "1"})
    r.cache.observe("ModelDeployment", md)
    api.calls.clear()
    result = r.reconcile_by_name("team-a", "m")
    assert result is not None and result.applied == ["Deployment/m"]
    return [c for c in api.calls if c[1] == "Deployment"]


def env_of(api: FakeApiServer, key: Key) -> list[dict[str, str]]:
    env: list[dict[str, str]] = (
        api.objects[key]["spec"]["template"]["spec"]["containers"][0].get("env") or []
    )
    return env


def test_first_pass_creates_what_the_cache_lacks_without_a_read_then_nothing(
    api: FakeApiServer,
) -> None:
    r = new_reconciler(api)
    result = r.reconcile_by_name("team-a", "m")
    assert result is not None and result.problem is None
    # A create per child (no GET first: a taken name answers 409), the engine pods'
    # NetworkPolicy first and the engine last, one status; no ModelDeployment read, no pod
    # list, and no "Applied" Event for a creation.
    assert api.calls == [
        ("POST", "NetworkPolicy"),
        ("POST", "Service"),
        ("POST", "Deployment"),
        ("APPLY", "ModelDeployment/status"),
    ]
    api.calls.clear()
    again = r.reconcile_by_name("team-a", "m")
    assert again is not None and again.applied == [] and not again.status_written
    assert api.calls == []  # a converged pass costs no request at all


def test_the_first_update_of_a_created_child_turns_its_fields_into_applied_ones(
    api: FakeApiServer,
) -> None:
    """A create leaves our fields under an Update entry that our applies would never
    remove; before the first apply over it that entry becomes an Apply entry, once."""
    r = new_reconciler(api)
    r.reconcile_by_name("team-a", "m")
    for env in ({"A": "1"}, {"B": "2"}):
        md = edit_env(api.objects[("ModelDeployment", "team-a", "m")], env)
        api.objects[("ModelDeployment", "team-a", "m")] = md
        r.cache.observe("ModelDeployment", md)
        api.calls.clear()
        result = r.reconcile_by_name("team-a", "m")
        assert result is not None and result.applied == ["Deployment/m"]
        writes = [c for c in api.calls if c[1] == "Deployment"]
        upgrade = [("PATCH", "Deployment")] if env == {"A": "1"} else []
        assert writes == [*upgrade, ("APPLY", "Deployment")]
    managers = api.objects[("Deployment", "team-a", "m")]["metadata"]["managedFields"]
    assert {"manager": "openmodel", "operation": "Update"} not in managers
    assert {"manager": "openmodel", "operation": "Apply"} in managers


def test_a_stale_cached_child_is_refused_read_again_and_not_reverted(api: FakeApiServer) -> None:
    autoscaled = copy.deepcopy(MD)
    autoscaled["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 4, "targetQueueDepth": 8}
    api.objects[("ModelDeployment", "team-a", "m")] = copy.deepcopy(autoscaled)
    r = new_reconciler(api)
    r.cache.observe("ModelDeployment", autoscaled)
    r.reconcile_by_name("team-a", "m")
    key = ("Deployment", "team-a", "m")

    # The autoscaler (of the replica holding the Lease) scales to 3; this replica's watch
    # has not delivered it, and a hand edit of the image (delivered) forces a pass that
    # must write the Deployment, replicas included (the reconciler keeps what it finds).
    def set_image(d: dict[str, Any]) -> None:
        d["spec"]["template"]["spec"]["containers"][0]["image"] = "someone/else:1"

    image = api.objects[key]["spec"]["template"]["spec"]["containers"][0]["image"]
    r.cache.observe("Deployment", api.edit(key, set_image))  # delivered
    api.edit(key, lambda d: d["spec"].__setitem__("replicas", 3))  # not yet
    api.calls.clear()
    result = r.reconcile_by_name("team-a", "m")
    assert result is not None and result.applied == ["Deployment/m"]
    # The first write over the created Deployment (its fields turned into applied ones)
    # answered a spec newer than the cached one: the pass is stale, the Deployment read
    # again, the pass ran once more.
    assert api.calls[:3] == [
        ("PATCH", "Deployment"),
        ("GET", "Deployment"),
        ("APPLY", "Deployment"),
    ]
    final = api.objects[key]
    assert final["spec"]["replicas"] == 3  # the newer change survived
    assert final["spec"]["template"]["spec"]["containers"][0]["image"] == image  # put back


def _applied_created_deployment(api: FakeApiServer) -> tuple[Reconciler, Key]:
    """A converged ModelDeployment whose Deployment's fields are already applied ones."""
    r = new_reconciler(api)
    r.reconcile_by_name("team-a", "m")
    key = ("Deployment", "team-a", "m")
    api.edit(key, lambda d: d["metadata"]["managedFields"][0].update(operation="Apply"))
    r.cache.observe("Deployment", copy.deepcopy(api.objects[key]))
    return r, key


def test_a_stale_apply_over_an_applied_child_is_refused_and_read_again(
    api: FakeApiServer,
) -> None:
    r, key = _applied_created_deployment(api)
    r.cache.observe("Deployment", api.edit(key, lambda d: d["spec"].update(paused=True)))
    api.edit(key, lambda d: d["spec"].__setitem__("replicas", 3))  # not yet delivered
    api.calls.clear()
    result = r.reconcile_by_name("team-a", "m")
    assert result is not None and result.applied == []  # paused is not ours
    assert api.calls == []
    assert _pass_after_an_env_edit(api, r) == [
        ("APPLY", "Deployment"),
        ("GET", "Deployment"),
        ("APPLY", "Deployment"),
    ]
    assert {"name": "A", "value": "1"} in env_of(api, key)


def _status_write(d: dict[str, Any]) -> None:
    """What the Deployment controller writes through a rollout: status, and its revision."""
    status = d.setdefault("status", {})
    status["observedGeneration"] = status.get("observedGeneration", 0) + 1
    annotations = d["metadata"].setdefault("annotations", {})
    annotations["deployment.kubernetes.io/revision"] = str(status["observedGeneration"])


def test_a_conflict_where_only_status_moved_applies_again_without_a_new_plan(
    api: FakeApiServer,
) -> None:
    """The Deployment controller writes status all through a rollout: a 409 from that
    alone is no stale plan. The child is read, the same apply sent over the new version."""
    r, key = _applied_created_deployment(api)
    api.edit(key, _status_write)  # not yet delivered
    assert _pass_after_an_env_edit(api, r) == [
        ("APPLY", "Deployment"),
        ("GET", "Deployment"),
        ("APPLY", "Deployment"),
    ]
    assert {"name": "A", "value": "1"} in env_of(api, key)


def test_the_first_update_is_not_stale_when_only_the_controllers_status_moved(
    api: FakeApiServer,
) -> None:
    """The Deployment controller's status and revision annotation, written after the
    cached copy, come back in the answer of the write that turns our created fields into
    applied ones: no stale plan, so no read again and no second pass (the e2e test of the
    stale cache once lost its one retry to this, the controller rolling out a hand edit)."""
    r = new_reconciler(api)
    r.reconcile_by_name("team-a", "m")
    key = ("Deployment", "team-a", "m")
    api.edit(key, _status_write)  # not yet delivered
    assert _pass_after_an_env_edit(api, r) == [
        ("PATCH", "Deployment"),
        ("APPLY", "Deployment"),
    ]
    assert {"name": "A", "value": "1"} in env_of(api, key)


def test_status_that_keeps_moving_ends_the_pass_after_a_bounded_number_of_applies(
    api: FakeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    r, key = _applied_created_deployment(api)
    real_apply = api.apply

    def status_moves_first(_api: Any, obj: Any, *args: Any, **kwargs: Any) -> Any:
        if obj["kind"] == "Deployment":
            api.edit(key, _status_write)  # the controller was quicker, every time
        return real_apply(_api, obj, *args, **kwargs)

    monkeypatch.setattr(kube, "apply", status_moves_first)
    md = edit_env(api.objects[("ModelDeployment", "team-a", "m")], {"A": "1"})
    r.cache.observe("ModelDeployment", md)
    api.calls.clear()
    assert r.reconcile_by_name("team-a", "m") is None  # the next watch event decides
    applies = [c for c in api.calls if c == ("APPLY", "Deployment")]
    # Two plans (the pass, then once more after reading again), each applying at most
    # 1 + STATUS_ONLY_REAPPLIES times; nothing was written.
    assert len(applies) == 2 * (1 + STATUS_ONLY_REAPPLIES)
    assert {"name": "A", "value": "1"} not in env_of(api, key)


FOREIGN_SERVICE: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {
        "name": "m",
        "namespace": "team-a",
        "uid": "svc-1",
        "resourceVersion": "50",
        "ownerReferences": [{"kind": "ConfigMap", "name": "legacy", "uid": "cm-1"}],
    },
    "spec": {"ports": [{"port": 1234}]},
}


def test_a_namespace_being_deleted_ends_the_pass_quietly(
    api: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Creates in a namespace being deleted are refused (403 NamespaceTerminating): no
    permission is missing and its ModelDeployments go with it, so the pass ends with
    nothing to retry and no warning (the install test reads the log for refusals)."""
    api.terminating.add("team-a")
    r = new_reconciler(api)
    with caplog.at_level(logging.INFO):
        assert r.reconcile_by_name("team-a", "m") is None
    assert api.calls == [("POST", "NetworkPolicy")]  # refused at the first create; no status
    assert [(rec.levelno, rec.getMessage()) for rec in caplog.records] == [
        (logging.INFO, "team-a/m: the namespace is being deleted; nothing created")
    ]


def test_a_namespace_already_gone_ends_the_pass_quietly(
    api: FakeApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A pass that runs after its namespace was deleted (its ModelDeployment's DELETED
    event not handled yet): the create answers 404 for the namespace. Nothing is left to
    serve, so one info line, nothing to retry, no traceback."""
    api.gone.add("team-a")
    r = new_reconciler(api)
    with caplog.at_level(logging.INFO):
        assert r.reconcile_by_name("team-a", "m") is None
    assert api.calls == [("POST", "NetworkPolicy")]  # refused at the first create; no status
    assert [(rec.levelno, rec.getMessage()) for rec in caplog.records] == [
        (logging.INFO, "team-a/m: the namespace is gone; nothing created")
    ]


def test_a_404_is_a_namespace_gone_only_when_it_names_the_namespace() -> None:
    child = ApiException(status=404, reason="Not Found")
    child.body = json.dumps(
        {
            "kind": "Status",
            "reason": "NotFound",
            "message": 'deployments.apps "m" not found',
            "details": {"name": "m", "group": "apps", "kind": "deployments"},
            "code": 404,
        }
    )
    unreadable = namespace_not_found_error("team-a")
    unreadable.body = "404 page not found"
    forbidden = namespace_not_found_error("team-a")
    forbidden.status = 403
    assert not kube.namespace_not_found(child)
    assert not kube.namespace_not_found(ApiException(status=404, reason="Not Found"))
    assert not kube.namespace_not_found(unreadable)
    assert not kube.namespace_not_found(forbidden)
    assert kube.namespace_not_found(namespace_not_found_error("team-a"))


def test_a_403_is_a_namespace_being_deleted_only_by_that_cause() -> None:
    rbac = ApiException(status=403, reason="Forbidden")
    rbac.body = json.dumps(
        {
            "kind": "Status",
            "reason": "Forbidden",
            "message": 'deployments.apps is forbidden: User "system:serviceaccount:s:o" '
            'cannot create resource "deployments"',
            "details": {"group": "apps", "kind": "deployments"},
            "code": 403,
        }
    )
    unreadable = namespace_terminating_error("deployments", "m", "team-a")
    unreadable.body = "<html>403</html>"
    assert not kube.namespace_terminating(rbac)
    assert not kube.namespace_terminating(ApiException(status=403, reason="Forbidden"))
    assert not kube.namespace_terminating(unreadable)
    assert kube.namespace_terminating(namespace_terminating_error("deployments", "m", "team-a"))


def test_someone_elses_service_is_not_taken_over(api: FakeApiServer) -> None:
    api.objects[("Service", "team-a", "m")] = copy.deepcopy(FOREIGN_SERVICE)
    r = new_reconciler(api)
    result = r.reconcile_by_name("team-a", "m")
    assert result is not None and result.problem is not None
    assert result.problem.reason == CHILD_NOT_OWNED
    assert "Service/m already exists and is owned by ConfigMap/legacy" in result.problem.message
    # Only the policy, which confines engine pods that do not exist yet.
    assert result.applied == ["NetworkPolicy/m"]
    assert api.objects[("Service", "team-a", "m")] == FOREIGN_SERVICE  # untouched
    # The create was refused (nothing written), the name read; no engine started.
    assert api.calls[:3] == [("POST", "NetworkPolicy"), ("POST", "Service"), ("GET", "Service")]
    assert ("POST", "Deployment") not in api.calls
    assert ("APPLY", "Deployment") not in api.calls
    # Not kept in the cache: nothing would tell it when that Service goes.
    assert r.cache.get("Service", "team-a", "m") is None
    del api.objects[("Service", "team-a", "m")]
    converged = r.reconcile_by_name("team-a", "m")
    assert converged is not None and converged.problem is None
    assert converged.applied == ["Service/m", "Deployment/m"]  # the policy was made before


def test_our_child_whose_label_was_removed_is_found_by_its_create_and_updated(
    api: FakeApiServer,
) -> None:
    r = new_reconciler(api)
    r.reconcile_by_name("team-a", "m")
    key = ("Service", "team-a", "m")
    unlabelled = api.edit(key, lambda s: s["metadata"].pop("labels"))
    r.cache.forget("Service", unlabelled)  # the label-selected watch says DELETED
    api.calls.clear()
    result = r.reconcile_by_name("team-a", "m")
    assert result is not None and result.problem is None
    assert [c for c in api.calls if c[1] == "Service"] == [
        ("POST", "Service"),  # 409: the name is taken
        ("GET", "Service"),  # by our own Service (our owner reference)
        ("PATCH", "Service"),  # its created fields become applied ones
        ("APPLY", "Service"),  # the label is back
    ]
    assert api.objects[key]["metadata"]["labels"]["openmodel.dev/model-deployment"] == "m"


def test_a_change_to_an_existing_child_posts_one_applied_event(api: FakeApiServer) -> None:
    r = new_reconciler(api)
    r.reconcile_by_name("team-a", "m")
    assert api.events == []
    service = r.cache.get("Service", "team-a", "m")
    assert service is not None
    edited = copy.deepcopy(service)
    edited["spec"]["type"] = "NodePort"
    api.objects[("Service", "team-a", "m")] = copy.deepcopy(edited)
    r.cache.observe("Service", edited)
    api.calls.clear()
    result = r.reconcile_by_name("team-a", "m")
    assert result is not None and result.applied == ["Service/m"]
    assert [e["reason"] for e in api.events] == ["Applied"]


# -- rate limit and 429 --------------------------------------------------------------------


def test_rate_limit_allows_the_burst_then_paces_at_qps() -> None:
    now = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    limit = kube.RateLimit(qps=10, burst=3, clock=lambda: now[0], sleep=sleep)
    for _ in range(3):
        assert limit.acquire() == 0.0
    assert limit.acquire() == pytest.approx(0.1)
    assert limit.acquire() == pytest.approx(0.1)
    now[0] += 10.0  # idle: the bucket refills to the burst, not beyond
    assert [limit.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limit.acquire() == pytest.approx(0.1)


def test_retry_after_is_honoured_and_bounded() -> None:
    assert kube.retry_after_seconds({"Retry-After": "2"}, 0) == 2.0
    assert kube.retry_after_seconds({}, 0) == 1.0
    assert kube.retry_after_seconds({}, 3) == 8.0
    assert kube.retry_after_seconds({"Retry-After": "3600"}, 0) == kube.MAX_RETRY_AFTER_SECONDS
    assert kube.retry_after_seconds({"Retry-After": "Wed, 21 Oct 2015"}, 1) == 2.0


def test_a_pod_that_lost_its_owner_label_is_forgotten_by_name() -> None:
    cache = ObjectCache()
    labels = {"labels": {"openmodel.dev/model-deployment": "m"}}
    cache.observe("Pod", body("Pod", "m-1", 3, **labels))
    # Label removed by hand: the label-selected watch sends DELETED with the new body.
    cache.forget("Pod", body("Pod", "m-1", 4))
    assert cache.pods("team-a", "m") == []
    assert cache.sizes()["Pod"] == 0
    # Relabelled to another owner: filed there only.
    cache.observe("Pod", body("Pod", "m-2", 5, **labels))
    cache.observe("Pod", body("Pod", "m-2", 6, labels={"openmodel.dev/model-deployment": "o"}))
    assert cache.pods("team-a", "m") == [] and len(cache.pods("team-a", "o")) == 1


def test_owner_name_from_the_label_or_the_owner_reference() -> None:
    from openmodel.operator_root import owner_name

    labelled = body("Deployment", "m", 1, labels={"openmodel.dev/model-deployment": "m"})
    assert owner_name(labelled) == "m"
    ref = {"apiVersion": "openmodel.dev/v1alpha1", "kind": "ModelDeployment", "name": "x"}
    assert owner_name(body("Deployment", "m", 1, ownerReferences=[ref])) == "x"
    other = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x"}
    assert owner_name(body("Pod", "m", 1, ownerReferences=[other])) is None


def test_the_loops_read_the_cache_not_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from openmodel.adapters.loop import AdapterLoop
    from openmodel.autoscaler.loop import AutoscalerLoop

    def no_request(*_: Any, **__: Any) -> Any:
        raise AssertionError("a loop asked the API server although the cache answers")

    for name in ("call", "get", "list_objects", "list_all_model_deployments", "list_cluster_wide"):
        monkeypatch.setattr(kube, name, no_request)
    cache = ObjectCache()
    cache.observe("ModelDeployment", copy.deepcopy(MD))  # neither autoscaled nor with adapters
    autoscaler = AutoscalerLoop(object(), PlatformConfig(), cache=cache)  # type: ignore[arg-type]
    adapters = AdapterLoop(object(), PlatformConfig(), cache=cache)  # type: ignore[arg-type]

    async def cycles() -> None:
        await autoscaler.cycle(None)  # type: ignore[arg-type]  (nothing to scrape)
        await adapters.cycle(None)  # type: ignore[arg-type]

    asyncio.run(cycles())
    assert autoscaler.histories == {}


def test_one_failing_model_deployment_does_not_stop_the_autoscaler_cycle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from openmodel.autoscaler import ScalingHistory
    from openmodel.autoscaler.loop import AutoscalerLoop

    cache = ObjectCache()
    for name in ("a", "b"):
        md = copy.deepcopy(MD)
        md["metadata"]["name"] = name
        md["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 8}
        cache.observe("ModelDeployment", md)
        labels = {"labels": {"openmodel.dev/model-deployment": name}}
        cache.observe("Deployment", body("Deployment", name, 1, **labels))
    loop = AutoscalerLoop(object(), PlatformConfig(), cache=cache)  # type: ignore[arg-type]
    loop.histories[("team-a", "deleted")] = ScalingHistory()
    served: list[str] = []

    async def scale_one(_: Any, body: Any, *__: Any, **___: Any) -> None:
        if body["metadata"]["name"] == "a":
            raise ApiException(status=500, reason="boom")
        served.append(body["metadata"]["name"])

    monkeypatch.setattr(loop, "scale_one", scale_one)
    asyncio.run(loop.cycle(None))  # type: ignore[arg-type]
    assert served == ["b"]
    assert ("team-a", "deleted") not in loop.histories


def test_cache_size_as_an_integer_quantity_and_garbage_adapter_status() -> None:
    from openmodel.adapters.loop import _has_adapter_status
    from openmodel.engines import parse_model_deployment

    md = copy.deepcopy(MD)
    md["spec"]["cache"] = {"size": 200}
    assert parse_model_deployment(md).spec.cache.size == "200"  # type: ignore[union-attr]
    assert not _has_adapter_status({"status": "garbage"})
    assert _has_adapter_status({"status": {"adapters": [{"name": "a"}]}})


def test_a_namespace_that_goes_takes_its_objects_and_names_its_model_deployments() -> None:
    cache = ObjectCache()

    def obj(kind: str, namespace: str, name: str, **labels: str) -> dict[str, Any]:
        meta = {"namespace": namespace, "name": name, "uid": f"{namespace}-{name}"}
        return {"kind": kind, "metadata": {**meta, "labels": labels, "resourceVersion": "1"}}

    cache.observe("ModelDeployment", obj("ModelDeployment", "gone", "llama"))
    cache.observe("Deployment", obj("Deployment", "gone", "llama"))
    cache.observe(
        "Pod", obj("Pod", "gone", "llama-0", **{"openmodel.dev/model-deployment": "llama"})
    )
    cache.observe("ModelDeployment", obj("ModelDeployment", "stays", "qwen"))
    assert cache.drop_namespace("gone") == [("gone", "llama")]
    assert [m["metadata"]["name"] for m in cache.model_deployments()] == ["qwen"]
    assert cache.all_of("Deployment") == [] and cache.all_of("Pod") == []
