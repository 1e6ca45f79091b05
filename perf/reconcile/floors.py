"""Steps 1 and 1b of bench_reconcile: what a plain client takes for the operator's
objects (the plain floor) and for the writes the operator must make (the same-writes
floor), both timed with the same client concurrency as the operator's step."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kubernetes import client

from perf.openmodel_api import (
    PlatformConfig,
    StatusObservation,
    build_status,
    endpoint,
    label_selector,
    make_plan,
    parse_model_deployment,
    utc_now,
)
from perf.runs import note

from .cpu import cpu_delta, cpu_snapshot, wait_calm
from .kubeio import (
    COLLECTIONS,
    Timeout,
    apply_body,
    create,
    create_namespace,
    delete_namespace,
    list_items,
    wait_until,
)
from .plane import GPU_TYPES
from .results import Results
from harness.audit import AuditLog
from harness.operator import load_example
from harness.rawapi import call

EXAMPLE = "llama70b-awq.yaml"
# The checks after each floor list from the API server's watch cache (resourceVersion=0),
# which can be a moment behind the last write on a busy machine; the time is taken before.
CACHE_LAG_DEADLINE = 30.0


@dataclass(frozen=True)
class Namespaces:
    """The benchmark's namespaces; the operator only ever serves `operator`
    (OPENMODEL_NAMESPACES)."""

    plain: str = "bench-plain"
    same: str = "bench-same"
    operator: str = "bench-operator"

    @classmethod
    def with_prefix(cls, prefix: str) -> Namespaces:
        return cls(f"{prefix}-plain", f"{prefix}-same", f"{prefix}-operator")


@dataclass(frozen=True)
class Pace:
    """How the timed steps start: with `concurrency` client threads, once the machine
    is calm (`calm` cores for others, `calm_sample` s samples, `calm_deadline` at most)."""

    concurrency: int = 8
    calm: float = 0.3
    calm_deadline: float = 300.0
    calm_sample: float = 5.0


def md_body(index: int, namespace: str) -> dict[str, Any]:
    body = load_example(EXAMPLE, namespace)
    body["metadata"]["name"] = f"md-{index:03d}"
    body["spec"]["gpu"] = {"type": GPU_TYPES[index % len(GPU_TYPES)], "count": 2}
    return body


def same_writes(api: client.ApiClient, body: Mapping[str, Any]) -> None:
    """The writes the operator must make for one ModelDeployment, by a plain client: its
    create, server-side apply of its Deployment and Service as the operator renders them
    (owner reference included), and one status apply shaped like the operator's first."""
    ns = body["metadata"]["namespace"]
    created = json.loads(call(api, "POST", COLLECTIONS["ModelDeployment"].format(ns=ns), body))
    md = parse_model_deployment(created)
    cfg = PlatformConfig()
    plan = make_plan(md, cfg, None)
    deployment = apply_body(api, plan.children.deployment)
    apply_body(api, plan.children.service)
    name = created["metadata"]["name"]
    obs = StatusObservation(
        generation=int(created["metadata"].get("generation") or 0),
        name=name,
        label_selector=label_selector(name),
        endpoint=endpoint(md, cfg),
        desired_replicas=plan.replicas,
        deployment=deployment,
        pods=(),
        gpu=f"{plan.gpu.count}x {md.spec.gpu.type}",
        sizing=plan.gpu.estimate,
    )
    status = build_status(obs, None, utc_now()).status
    apply_body(
        api,
        {
            "apiVersion": created["apiVersion"],
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": ns},
            "status": status,
        },
        subresource="status",
    )


def plain_objects(count: int, namespace: str) -> list[dict[str, Any]]:
    """What the operator would create for md-000.. (no owner reference: no uid yet)."""
    objects: list[dict[str, Any]] = []
    for i in range(count):
        plan = make_plan(parse_model_deployment(md_body(i, namespace)), PlatformConfig(), None)
        objects += [plan.children.deployment, plan.children.service]
    return objects


def create_all(
    api: client.ApiClient, pool: ThreadPoolExecutor, objects: Iterable[Mapping[str, Any]]
) -> list[Future[None]]:
    return [pool.submit(create, api, obj) for obj in objects]


def floors(
    count: int,
    api: client.ApiClient,
    audit: AuditLog,
    pool: ThreadPoolExecutor,
    pids: dict[str, int],
    res: Results,
    namespaces: Namespaces,
    pace: Pace,
    deadline: float,
) -> None:
    """Steps 1 and 1b: the plain and the same-writes floor, each namespace deleted after."""
    # 1. plain client
    plain_ns = namespaces.plain
    objects = plain_objects(count, plain_ns)
    create_namespace(api, plain_ns)
    res.calm.append(wait_calm(pids, pace.calm, pace.calm_deadline, pace.calm_sample))
    note(f"step 1: {len(objects)} plain creates, {pace.concurrency} at a time")
    cpu0 = cpu_snapshot(pids)
    plain_wall0 = time.time()
    started = time.monotonic()
    for f in create_all(api, pool, objects):
        f.result()
    res.plain_seconds = time.monotonic() - started
    res.phase("plain", cpu_delta(cpu0, cpu_snapshot(pids)), res.plain_seconds)
    res.plain_requests = audit.between(plain_wall0, time.time())
    held: dict[str, int] = {}

    def all_created() -> bool:
        for kind in ("Deployment", "Service"):
            held[kind] = len(list_items(api, kind, plain_ns, metadata_only=True))
        return held == {"Deployment": count, "Service": count}

    try:
        wait_until(f"{plain_ns} to list every object", all_created, CACHE_LAG_DEADLINE, 0.2)
    except Timeout:
        raise RuntimeError(f"{plain_ns} holds {held}, not {count} of each") from None
    note(
        f"  {res.plain_seconds:.2f}s; deleting {plain_ns}: the next step starts on an empty cluster"
    )
    note(f"  {plain_ns} deleted in {delete_namespace(api, plain_ns, deadline):.0f}s")

    # 1b. the same writes as the operator, by a plain client (no operator running yet,
    # and the operator serves only the operator's namespace once it runs)
    same_ns = namespaces.same
    create_namespace(api, same_ns)
    same_bodies = [md_body(i, same_ns) for i in range(count)]
    res.calm.append(wait_calm(pids, pace.calm, pace.calm_deadline, pace.calm_sample))
    note(
        f"step 1b: {count} x (ModelDeployment create, Deployment and Service apply, status "
        f"apply), {pace.concurrency} at a time"
    )
    cpu0 = cpu_snapshot(pids)
    same_wall0 = time.time()
    started = time.monotonic()
    for f in [pool.submit(same_writes, api, body) for body in same_bodies]:
        f.result()
    res.same_seconds = time.monotonic() - started
    res.phase("same writes", cpu_delta(cpu0, cpu_snapshot(pids)), res.same_seconds)
    res.same_requests = audit.between(same_wall0, time.time())
    with_status = [0]

    def every_status() -> bool:
        with_status[0] = sum(
            1
            for md in list_items(api, "ModelDeployment", same_ns)
            if (md.get("status") or {}).get("observedGeneration")
            == md["metadata"].get("generation")
        )
        return with_status[0] == count

    try:
        wait_until(f"{same_ns} to list every status", every_status, CACHE_LAG_DEADLINE, 0.2)
    except Timeout:
        raise RuntimeError(
            f"{same_ns}: {with_status[0]} of {count} ModelDeployments have a status"
        ) from None
    note(f"  {res.same_seconds:.2f}s; deleting {same_ns}")
    note(f"  {same_ns} deleted in {delete_namespace(api, same_ns, deadline):.0f}s")
