"""bench_reconcile's report: per count, every measurement with PASS/MISS against the
targets, then one table over every count."""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

from .cpu import NOISY_CORES, OTHERS, STEAL
from .results import Results, median, p90
from .steps import NOT_OURS, OURS
from harness.audit import AUDIT_WRITES

MUTATING = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")


def resource_name(group: str, resource: str, subresource: str) -> str:
    name = f"{resource}.{group}" if group else resource
    return f"{name}/{subresource}" if subresource else name


def row(label: str, value: float, unit: str = "", note: str = "") -> None:
    print(f"  {label:<58}{value:9.2f} {unit:<4}{note}")


def report(res: Results) -> bool:
    """Print everything; True when every target is met."""
    ok = True
    per_min = 60.0 / res.window if res.window else float("nan")
    ratio = res.operator_seconds / res.plain_seconds
    print(f"\n== Reconcile: {res.count} ModelDeployments, client concurrency {res.concurrency} ==")
    print(f"  {res.source}")
    if not res.audited:
        print("  NO AUDIT LOG on this cluster: the request counts below are not measured")
    print(f"  1-min load average at start/end: {' / '.join(res.load)} (2 cores)")
    print(
        f"  machine speed: {res.machine_probe:.3f} s for a fixed Python loop before the "
        "control plane started (lower is faster; compare runs of different hours by it)"
    )
    print(
        "  cores used by other processes (and steal) just before steps 1, 1b and 2: "
        + " / ".join(f"{c:.2f}" for c in res.calm)
        + " (during each step: 'others on this machine' below)"
    )
    row(
        f"plain client: {res.count} Deployments + {res.count} Services created",
        res.plain_seconds,
        "s",
    )
    row("operator: every ModelDeployment created", res.operator_creates_seconds, "s")
    row("operator: every Deployment exists", res.operator_deployments_seconds, "s")
    row("operator: converged (Deployment + observedGeneration)", res.operator_seconds, "s")
    ok &= ratio <= 2.0
    row("ratio operator/plain (target <= 2)", ratio, "", "ok" if ratio <= 2.0 else "MISSED")
    plain_reqs = 2 * res.count
    op_total = sum(
        1
        for r in res.converge_requests
        if r.client == "operator" or (r.client == "bench" and r.verb == "create")
    )
    row("requests, plain step (creates)", plain_reqs)
    row("requests, operator step (ModelDeployment creates + operator's)", op_total)
    noisy = {
        phase: (cpu.get(OTHERS, 0.0) + cpu.get(STEAL, 0.0)) / res.wall[phase]
        for phase, cpu in res.cpu.items()
        if phase in ("plain", "operator run") and res.wall.get(phase)
    }
    for phase, cores in noisy.items():
        if cores > NOISY_CORES:
            print(
                f"  NOISY: other processes (and steal) took {cores:.2f} of {os.cpu_count()}"
                f" cores in the {phase} step: its time is not comparable"
            )

    op_reqs = [r for r in res.converge_requests if r.client == "operator"]
    passes = sum(
        1
        for r in op_reqs
        if r.verb == "get" and r.resource == "modeldeployments" and r.name and not r.subresource
    )
    print(f"\n-- operator requests while converging ({res.operator_seconds:.1f}s), audit log:")
    row("requests", len(op_reqs))
    row("requests per second", len(op_reqs) / res.operator_seconds)
    row("reconcile passes (GETs of a ModelDeployment)", passes)
    row("passes per ModelDeployment", passes / res.count)
    row("requests per ModelDeployment", len(op_reqs) / res.count)
    by_kind = collections.Counter(
        (r.verb, resource_name(r.group, r.resource, r.subresource), r.code) for r in op_reqs
    )
    for (verb, name, code), n in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"    {n:6d}  {verb:<7} {name:<42} {code}")
    for step, reqs in (("plain", res.plain_requests), ("operator", res.converge_requests)):
        clients = collections.Counter(r.client for r in reqs)
        print(
            f"    all requests during the {step} step: {len(reqs)}: "
            + ", ".join(f"{c} {n}" for c, n in clients.most_common())
        )

    print("\n-- CPU seconds by process and phase:")
    phases = list(res.cpu)
    names = sorted(
        {n for p in res.cpu.values() for n in p},
        key=lambda n: -res.cpu.get("operator run", {}).get(n, 0.0),
    )
    print(f"    {'process':<26}" + "".join(f"{p:>14}" for p in phases))
    print(f"    {'(wall seconds)':<26}" + "".join(f"{res.wall[p]:14.1f}" for p in phases))
    for process in names:
        cpu = "".join(f"{res.cpu[p].get(process, float('nan')):14.1f}" for p in phases)
        print(f"    {process:<26}{cpu}")

    if res.profile is not None:
        print("\n-- py-spy, operator process during step 2:")
        for ln in profile_summary(res.profile):
            print(f"    {ln}")

    quiet = (
        f"operator quiet after {res.quiet_after:.0f}s"
        if res.quiet
        else f"operator NOT quiet within {res.quiet_after:.0f}s"
    )
    print(f"\n-- mutating requests per minute once converged ({quiet}; window {res.window:.0f}s):")
    print("    metrics: apiserver_request_total delta, all clients; who: audit log, per client")
    writes_by: dict[tuple[str, str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for r in res.window_requests:
        if r.verb in AUDIT_WRITES:
            writes_by[(r.group, r.resource, r.subresource)][r.client] += 1
    rows: dict[tuple[str, str, str], collections.Counter[str]] = collections.defaultdict(
        collections.Counter
    )
    for (group, resource, sub, verb), total in res.metrics_delta.items():
        if verb in MUTATING:
            rows[(group, resource, sub)][verb] += round(total)
    for key in writes_by:
        rows.setdefault(key, collections.Counter())
    ours_total = 0.0
    print(f"    {'resource':<40}{'/min':>8}  {'verbs':<20} who (/min)")

    def line(key: tuple[str, str, str]) -> None:
        nonlocal ours_total
        verbs = rows.get(key, collections.Counter())
        who = writes_by.get(key, collections.Counter())
        if (key[0], key[1]) in OURS:
            ours_total += who.get("operator", 0) * per_min
        by_verb = " ".join(f"{v}:{n}" for v, n in sorted(verbs.items()))
        by_who = ", ".join(f"{c} {n * per_min:.1f}" for c, n in who.most_common()) or "-"
        total = sum(verbs.values()) * per_min
        print(f"    {resource_name(*key):<40}{total:8.1f}  {by_verb:<20} {by_who}")

    shown: set[tuple[str, str, str]] = set()

    def section(title: str, kinds: Iterable[tuple[str, str]]) -> None:
        print(f"   {title}")
        for group, resource in kinds:
            keys = sorted(k for k in rows if (k[0], k[1]) == (group, resource))
            for key in keys or [(group, resource, "")]:
                line(key)
                shown.add(key)

    section("ours (what the operator writes, or its children):", OURS)
    section("not ours (KWOK heartbeats; operator leases would be leader election):", NOT_OURS)
    rest = sorted(k for k in rows if k not in shown)
    if rest:
        section("other:", sorted({(k[0], k[1]) for k in rest}))
    if not any(r.client == "kwok" and r.resource == "leases" for r in res.window_requests):
        print(
            "    kwok renewed no node Lease: without Leases (kwok --node-lease-duration-seconds)"
            " the node controller marks the nodes Unknown every minute, and the writes that"
            " follow are the harness's, not the operator's"
        )
    ok &= ours_total == 0
    verdict = "ok" if ours_total == 0 else "MISSED"
    row("operator writes/min on our resources (target 0)", ours_total, "", verdict)
    reads = collections.Counter(
        (r.verb, resource_name(r.group, r.resource, r.subresource))
        for r in res.window_requests
        if r.client == "operator" and r.verb not in AUDIT_WRITES
    )
    print(
        "    operator reads in the window (one resync pass GETs every ModelDeployment): "
        + (", ".join(f"{v} {name} {n}" for (v, name), n in reads.most_common()) or "none")
    )
    print(
        "    pods, pods/status: kwok (plays the kubelet), the scheduler (binding, PodScheduled)\n"
        "    and the ReplicaSet controller (create); deployments/status, replicasets, endpoints\n"
        "    and core events: the controller-manager; events.k8s.io events: the scheduler\n"
        "    (FailedScheduling retries). Only the 'operator' column is openmodel's."
    )

    print("\n-- operator process at the end:")
    row("RSS", res.operator_rss / 2**20, "MiB")
    row("CPU time since start (user+system)", res.operator_cpu_total, "s")
    if res.operator_log is not None and res.operator_log.exists():
        text = res.operator_log.read_text(errors="replace").splitlines()
        counts: collections.Counter[str] = collections.Counter()
        for ln in text:
            for word in ("applied ", "WARNING", "ERROR", "Traceback"):
                if word in ln:
                    counts[word.strip()] += 1
        summary = ", ".join(f"{w} {n}" for w, n in counts.items())
        print(f"    operator log: {len(text)} lines; {summary}")
        for ln in [ln for ln in text if "ERROR" in ln or "WARNING" in ln][:5]:
            print(f"      {ln[:160]}")
    ok &= scale_report(res)
    print(f"\nresult: {'every target met' if ok else 'a target was MISSED'}")
    return ok


READS = ("get", "list")


@dataclasses.dataclass(frozen=True)
class Verdict:
    count: int
    target: str
    value: str
    ok: bool


def idle_by_client(res: Results) -> dict[str, tuple[float, float]]:
    """(reads, writes) per minute in the idle window, per client; the operator's Lease
    requests (leader election) as a client of their own."""
    per_min = 60.0 / res.window if res.window else float("nan")
    reads: collections.Counter[str] = collections.Counter()
    writes: collections.Counter[str] = collections.Counter()
    for r in res.window_requests:
        who = r.client
        if who == "operator" and r.resource == "leases":
            who = "operator (Lease)"
        if r.verb in READS:
            reads[who] += 1
        elif r.verb in AUDIT_WRITES:
            writes[who] += 1
    return {c: (reads[c] * per_min, writes[c] * per_min) for c in sorted({*reads, *writes})}


def edit_noise(res: Results) -> float:
    """What the baseline's own spread allows: p90 - median of the empty-cluster edits,
    at least 0.1 s."""
    return max(0.1, p90(res.edits_empty) - median(res.edits_empty))


def verdicts(res: Results) -> list[Verdict]:
    n = res.count
    same_ratio = res.operator_seconds / res.same_seconds
    plain_ratio = res.operator_seconds / res.plain_seconds
    idle = idle_by_client(res)
    op_reads, op_writes = idle.get("operator", (0.0, 0.0))
    out = []
    if res.same_seconds == res.same_seconds:  # not NaN: the floors ran
        out += [
            Verdict(
                n, "operator / same-writes floor <= 1.3", f"{same_ratio:.2f}x", same_ratio <= 1.3
            ),
            Verdict(n, "operator / plain floor <= 2", f"{plain_ratio:.2f}x", plain_ratio <= 2.0),
        ]
    out += [
        Verdict(
            n,
            "idle: 0 operator reads and writes/min (Lease aside)",
            f"{op_reads:.1f} r, {op_writes:.1f} w",
            res.window > 0 and op_reads == 0 and op_writes == 0,
        ),
    ]
    limit = {1000: 250 * 2**20, 5000: 2**30}.get(n)
    if limit is not None:
        out.append(
            Verdict(
                n,
                f"operator peak RSS <= {limit // 2**20} MiB",
                f"{res.operator_peak_rss / 2**20:.0f} MiB",
                0 < res.operator_peak_rss <= limit,
            )
        )
    loaded, empty = median(res.edits_loaded), median(res.edits_empty)
    out.append(Verdict(n, "single edit: median <= 1 s", f"{loaded:.3f} s", loaded <= 1.0))
    noise = edit_noise(res)
    out.append(
        Verdict(
            n,
            f"single edit: median <= baseline + noise ({empty:.3f} + {noise:.3f} s)",
            f"{loaded:.3f} s",
            loaded <= empty + noise,
        )
    )
    return out


def scale_report(res: Results) -> bool:
    """The same-writes floor, readiness, requests per ModelDeployment by verb, idle
    requests by client, the operator's peak RSS and the single-edit latency."""
    n = res.count
    print(f"\n-- scale: {n} ModelDeployments, {res.nodes} KWOK GPU nodes")
    row(f"plain floor: {n} Deployment + {n} Service creates", res.plain_seconds, "s")
    row(f"same-writes floor: {n} x (MD create, 2 applies, status apply)", res.same_seconds, "s")
    same_reqs = collections.Counter(r.verb for r in res.same_requests if r.client == "bench")
    print("    same-writes floor requests: " + ", ".join(f"{v} {c}" for v, c in same_reqs.items()))
    row("operator: every Deployment + Service + observedGeneration", res.operator_seconds, "s")
    row("operator: every status Ready", res.operator_ready_seconds, "s")
    row(
        "controllers: every Deployment's pod Ready (kcm, scheduler, kwok)",
        res.controllers_ready_seconds,
        "s",
    )
    row(
        "  operator's lag behind the controllers (status Ready)",
        res.operator_ready_seconds - res.controllers_ready_seconds,
        "s",
    )
    row(
        "ratio operator / same-writes floor (target <= 1.3)",
        res.operator_seconds / res.same_seconds,
    )
    row("ratio operator / plain floor (target <= 2)", res.operator_seconds / res.plain_seconds)
    op_reqs = [r for r in res.converge_requests if r.client == "operator"]
    by_verb = collections.Counter(r.verb for r in op_reqs)
    print(
        "    operator requests per ModelDeployment while converging, by verb: "
        + ", ".join(f"{v} {c / n:.2f}" for v, c in by_verb.most_common())
        + f"  (total {len(op_reqs) / n:.2f})"
    )
    row("operator CPU seconds while converging", res.operator_cpu_converge, "s")
    row("operator CPU seconds since start", res.operator_cpu_total, "s")
    row("operator peak RSS (VmHWM)", res.operator_peak_rss / 2**20, "MiB")
    print(
        f"    requests per idle minute by client (audit log, watches not logged; window "
        f"{res.window:.0f}s):"
    )
    print(f"      {'client':<40}{'reads':>8}{'writes':>8}")
    for who, (r, w) in idle_by_client(res).items():
        print(f"      {who:<40}{r:8.1f}{w:8.1f}")
    for label, values in (
        ("empty cluster", res.edits_empty),
        (f"{n} in the cluster", res.edits_loaded),
    ):
        print(
            f"    single edit -> Deployment changed ({label}, {len(values)} edits): median "
            f"{median(values):.3f}s, p90 {p90(values):.3f}s, "
            f"max {max(values, default=float('nan')):.3f}s"
        )
    ok = True
    for v in verdicts(res):
        print(f"    {'PASS' if v.ok else 'MISS'}  {v.target}: {v.value}")
        ok &= v.ok
    return ok


def summary(results: list[Results]) -> bool:
    """One table over every count, then every target as PASS/MISS."""
    print("\n== Scale summary ==")
    if results:
        print(f"  {results[0].source}")
    head = (
        "count",
        "plain s",
        "same s",
        "operator s",
        "Ready s",
        "ctrl Ready s",
        "op/same",
        "op/plain",
        "req/MD",
        "op CPU s",
        "op cores",
        "peak RSS MiB",
        "idle op r/w per min",
        "edit med s (empty)",
        "edit p90 s (empty)",
    )
    print("  | " + " | ".join(head) + " |")
    print("  |" + "---|" * len(head))
    for res in results:
        op_reqs = sum(1 for r in res.converge_requests if r.client == "operator")
        r_, w_ = idle_by_client(res).get("operator", (0.0, 0.0))
        cells = (
            f"{res.count:,}",
            f"{res.plain_seconds:.2f}",
            f"{res.same_seconds:.2f}",
            f"{res.operator_seconds:.2f}",
            f"{res.operator_ready_seconds:.1f}",
            f"{res.controllers_ready_seconds:.1f}",
            f"{res.operator_seconds / res.same_seconds:.2f}",
            f"{res.operator_seconds / res.plain_seconds:.2f}",
            f"{op_reqs / res.count:.1f}" if res.count else "nan",
            f"{res.operator_cpu_converge:.1f}",
            f"{res.operator_cpu_converge / res.operator_seconds:.2f}",
            f"{res.operator_peak_rss / 2**20:.0f}",
            f"{r_:.0f} / {w_:.0f}",
            f"{median(res.edits_loaded):.3f} ({median(res.edits_empty):.3f})",
            f"{p90(res.edits_loaded):.3f} ({p90(res.edits_empty):.3f})",
        )
        print("  | " + " | ".join(cells) + " |")
    ok = True
    for res in results:
        for v in verdicts(res):
            print(f"  {'PASS' if v.ok else 'MISS'}  {v.count:>5}: {v.target}: {v.value}")
            ok &= v.ok
    return ok


def profile_summary(path: Path, top: int = 14) -> list[str]:
    """Where the operator's threads are, from py-spy's raw (collapsed) output: the kopf
    event loop vs handler threads, and inclusive samples per openmodel call site."""
    sites: collections.Counter[str] = collections.Counter()
    total = loop = handlers = locked = 0
    for line in path.read_text(errors="replace").splitlines():
        stack_text, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack_text.split(";")
        loop += n if any(f.startswith("BaseEventLoop.run_forever") for f in frames) else 0
        handlers += n if any(f.startswith("_WorkItem.run") for f in frames) else 0
        ours = [f for f in frames if "(openmodel/" in f]
        if ours and ours[-1].startswith("KeyedLocks.hold"):
            locked += n  # the deepest openmodel frame waits for another pass's lock
        seen = set()
        for frame in frames:
            if "(openmodel/" in frame and "__main__" not in frame and frame not in seen:
                seen.add(frame)
                sites[frame.replace("openmodel/", "")] += n
    pct = 100 / max(total, 1)
    lines = [
        f"{total} samples at 50 Hz summed over threads (blocked in I/O counts too):",
        f"{loop * pct:5.1f}%  kopf's asyncio loop thread; {handlers * pct:5.1f}%  handler threads,"
        f" of which {locked * pct:.1f}% wait for another pass of the same object (KeyedLocks)",
        "inclusive share per openmodel frame (function, file:line):",
    ]
    lines += [f"{n * pct:5.1f}%  {frame}" for frame, n in sites.most_common(top)]
    return lines
