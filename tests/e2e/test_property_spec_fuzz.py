"""Property-based: every ModelDeployment the CRD schema accepts is served or Degraded.

Hypothesis draws specs from strategies written after crds/modeldeployment.yaml (types,
enums, patterns, bounds, and the CEL rules' neighbourhood: engine x quantization, GGUF,
cpu, adapters vs lora, s3:// models) and creates each one in the real API server with the
session's operator running. What the API server refuses at create (a CEL rule, a
pattern) is discarded (``reject()``), not counted. Then, for every accepted object:

* it ends served (its Deployment exists and status.observedGeneration == generation) or
  with Degraded=True and a reason (also for the current generation);
* the operator kept its pid and logged no traceback;
* it never wrote the spec: generation is still the one the create returned, and no
  managedFields entry of openmodel, openmodel-autoscaler or openmodel-adapters holds
  an ``f:spec`` field;
* no hot loop: over a calm window after convergence, the operator's reconcile passes
  (``openmodel_reconcile_total``, all results) per object and the writes per object
  (resourceVersion changes of the ModelDeployment and of its children) stay within
  the bounds stated at ``PASSES_PER_OBJECT`` and ``WRITES_PER_OBJECT``.

Examples are derandomized (the same specs every run; ``OPENMODEL_FUZZ_SEED`` picks
another set and is printed), and the checks run once over all of them after generation,
so failures name the spec but are not shrunk. Budget: about 60 s on this machine.
"""

from __future__ import annotations

import functools
import json
import os
import re
import string
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, seed, settings
from hypothesis import strategies as st
from kubernetes import client
from kubernetes import watch as kwatch
from kubernetes.client.exceptions import ApiException

from harness import NotYet, wait_for
from openmodel_fixtures import GROUP, PLURAL, VERSION, OperatorProcess, condition

pytestmark = pytest.mark.cluster

EXAMPLES = 48
SEED = int(os.environ.get("OPENMODEL_FUZZ_SEED", "0"))
# The calm window: longer than the session operator's resync period (10 s, see
# openmodel_fixtures.start_operator) so a resync pass falls inside it.
CALM_SECONDS = 12.0
# Event-driven reconcile passes per object over the window. Calm, a converged object
# gets none (its own writes' echoes are skipped, children do not change); the resync's
# passes are not counted here (`reconcile_passes`), its writes are. Allowed: 2, for a
# late pod status (KWOK marks pods Running after the Deployment settles) and its
# ReplicaSet's echo.
PASSES_PER_OBJECT = 2.0
# Writes (resourceVersion changes) per object, its children included, over the window:
# status is written only when it changed, children only when they differ from the plan.
# Allowed: 1, a pod turning Ready inside the window changes readyReplicas once.
WRITES_PER_OBJECT = 1.0
MANAGERS = ("openmodel", "openmodel-autoscaler", "openmodel-adapters")

# --- strategies, after the CRD's openAPIV3Schema -------------------------------------

KNOWN_MODELS = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "meta-llama/Llama-3.1-70B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
    "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
    "bartowski/Llama-3.2-1B-Instruct-GGUF",
    "deepseek-ai/DeepSeek-V3",
]
# Not nvidia-a10g: only the process nodes have it, where pods really run an engine.
ACCELERATORS = [
    "nvidia-t4",
    "nvidia-l4",
    "nvidia-a100-80gb",
    "nvidia-h100-80gb",
    "nvidia-b200",
    "cpu",
]
DNS_LABEL = st.from_regex(r"\A[a-z]([-a-z0-9]{0,10}[a-z0-9])?\Z")
REPO_PART = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,15}\Z")
INT32 = 2**31 - 1


def repo_ids() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(KNOWN_MODELS),
        st.builds(lambda a, b: f"{a}/{b}", REPO_PART, REPO_PART),
        REPO_PART,
    )


def models() -> st.SearchStrategy[str]:
    return st.one_of(
        repo_ids(),
        st.builds(lambda c, p: f"pvc://{c}/{p}", DNS_LABEL, st.sampled_from(["m", "w/x.gguf"])),
        st.builds(lambda b: f"s3://{b}/weights", DNS_LABEL),
        st.builds(lambda b: f"gs://{b}/w", DNS_LABEL),
    )


def optional(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """The field in one example of three: with a dozen optional fields, more would make
    almost every spec carry most of them."""
    return st.one_of(st.just({}), st.just({}), values.map(lambda v: {key: v}))


@st.composite
def autoscaling(draw: st.DrawFn) -> dict[str, Any]:
    high = draw(st.integers(1, 6))
    out: dict[str, Any] = {"maxReplicas": high}
    out |= draw(optional("minReplicas", st.integers(0, high)))
    out |= draw(
        optional(
            "targetQueueDepth",
            st.floats(min_value=1e-6, max_value=1e6, allow_nan=False, exclude_min=False),
        )
    )
    out |= draw(optional("scaleUpStabilizationSeconds", st.integers(0, 3600)))
    out |= draw(optional("scaleDownStabilizationSeconds", st.integers(0, 3600)))
    out |= draw(optional("scaleToZeroAfterSeconds", st.integers(30, 604800)))
    return out


@st.composite
def adapters(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(DNS_LABEL, min_size=1, max_size=3, unique=True))
    return [{"name": n, "source": draw(repo_ids())} for n in names]


PRINTABLE_NO_EQ = "".join(c for c in string.printable[:95] if c != "=")


# Small models the catalogue sizes, on accelerators the KWOK pool has: most of these fit.
SERVABLE_MODELS = [
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-7B-Instruct",
    "Qwen/Qwen2.5-0.5B-Instruct",
    "mistralai/Mistral-7B-Instruct-v0.3",
]
SERVABLE_GPUS = ["nvidia-h100-80gb", "nvidia-a100-80gb", "nvidia-l4"]


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """Half of the examples start from a servable base (a small known model on an H100,
    A100 or L4 with a GPU engine) so that the optional fields are exercised on objects
    that get as far as a Deployment; the other half draw every field freely."""
    spec: dict[str, Any]
    if draw(st.booleans()):
        spec = {
            "model": draw(st.sampled_from(SERVABLE_MODELS)),
            "gpu": {"type": draw(st.sampled_from(SERVABLE_GPUS))},
        }
        spec |= draw(optional("engine", st.sampled_from(["vllm", "tgi", "sglang"])))
    else:
        spec = {"model": draw(st.one_of(st.sampled_from(KNOWN_MODELS), models()))}
        accelerator = st.sampled_from(ACCELERATORS)
        gpu_type = draw(st.one_of(accelerator, accelerator, accelerator, DNS_LABEL))
        spec["gpu"] = {"type": gpu_type} | draw(optional("count", st.integers(1, 64)))
        spec |= draw(optional("engine", st.sampled_from(["vllm", "tgi", "sglang", "llamacpp"])))
        spec |= draw(
            optional(
                "quantization",
                st.sampled_from(
                    ["none", "awq", "gptq", "fp8", "bitsandbytes", "gguf", "compressed-tensors"]
                ),
            )
        )
        if spec.get("engine") == "llamacpp" or draw(st.booleans()):
            spec |= draw(optional("ggufFile", st.sampled_from(["model-Q4_K_M.gguf", "a b.gguf"])))
    spec |= draw(optional("replicas", st.integers(0, 3)))
    spec |= draw(optional("autoscaling", autoscaling()))
    spec |= draw(optional("servedModelName", st.text(PRINTABLE_NO_EQ, min_size=1, max_size=20)))
    spec |= draw(optional("maxModelLen", st.one_of(st.integers(1, 65536), st.just(INT32))))
    spec |= draw(optional("args", st.lists(st.text(PRINTABLE_NO_EQ, max_size=12), max_size=3)))
    spec |= draw(
        optional(
            "env",
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.text(PRINTABLE_NO_EQ, min_size=1, max_size=10)},
                    optional={"value": st.text(max_size=10)},
                ),
                max_size=2,
            ),
        )
    )
    spec |= draw(optional("image", st.sampled_from(["vllm/vllm-openai:v0.32.0", "x"])))
    spec |= draw(optional("hfTokenSecretRef", st.fixed_dictionaries({"name": DNS_LABEL})))
    spec |= draw(
        optional(
            "cache",
            st.fixed_dictionaries(
                {"size": st.one_of(st.sampled_from(["10Gi", "0", "1.5Ti", "500M"]), st.just(1))}
            ),
        )
    )
    spec |= draw(
        optional(
            "modelInfo",
            st.fixed_dictionaries(
                {"parametersBillions": st.floats(1e-3, 1e4, allow_nan=False)},
                optional={
                    "layers": st.integers(1, 10**6),
                    "attentionHeads": st.integers(1, 512),
                    "kvHeads": st.integers(1, 512),
                    "headDim": st.integers(1, 4096),
                    "maxContextLength": st.integers(1, 10**9),
                },
            ),
        )
    )
    if draw(st.integers(0, 3)) == 0:
        spec["adapters"] = draw(adapters())
    spec |= draw(
        optional(
            "lora",
            st.fixed_dictionaries(
                {},
                optional={
                    "maxRank": st.sampled_from([8, 16, 512]),
                    "maxAdapters": st.integers(1, 8),
                },
            ),
        )
    )
    return spec


# --- the run --------------------------------------------------------------------------


@dataclass
class Created:
    name: str
    spec: dict[str, Any]
    generation: int


@dataclass
class Tally:
    generated: int = 0
    refused: int = 0
    created: list[Created] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)


def reconcile_passes(op: OperatorProcess) -> float:
    """Passes events asked for so far: all passes less the resync's sweep (the session
    operator's sweep covers every test's ModelDeployments, so it is no bound of ours)."""
    with urllib.request.urlopen(op.metrics_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    found = re.findall(r'^openmodel_reconcile_total\{result="[a-z]+"\} (\S+)$', text, re.M)
    swept = re.findall(r"^openmodel_resync_passes_total (\S+)$", text, re.M)
    # A renamed metric must not make the bound vacuous.
    assert found and len(swept) == 1, text[:2000]
    return sum(float(v) for v in found) - float(swept[0])


def outcome(md: dict[str, Any], deployments: set[str]) -> str | NotYet:
    meta, status = md["metadata"], md.get("status") or {}
    current = status.get("observedGeneration") == meta["generation"]
    degraded = condition(md, "Degraded")
    if degraded.get("status") == "True" and current:
        assert degraded.get("reason"), degraded
        return f"degraded:{degraded['reason']}"
    if meta["name"] in deployments and current:
        return "served"
    return NotYet(
        f"{meta['name']}: generation {meta['generation']}, status {json.dumps(status)[:300]}"
    )


def count_writes(api: client.ApiClient, ns: str, seconds: float) -> dict[str, int]:
    """Writes per object over `seconds`, from watches of the ModelDeployments and the
    children the operator makes (every MODIFIED/ADDED/DELETED event is one write)."""
    custom, apps, core = client.CustomObjectsApi(api), client.AppsV1Api(api), client.CoreV1Api(api)
    lists: dict[str, Callable[..., Any]] = {
        "md": functools.partial(custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL),
        "deploy": functools.partial(apps.list_namespaced_deployment, ns),
        "svc": functools.partial(core.list_namespaced_service, ns),
        "pvc": functools.partial(core.list_namespaced_persistent_volume_claim, ns),
    }

    def watch(kind: str) -> list[str]:
        listing = lists[kind]()
        version = (
            listing["metadata"]["resourceVersion"]
            if isinstance(listing, dict)
            else listing.metadata.resource_version
        )
        names = []
        stream = kwatch.Watch().stream(
            lists[kind], resource_version=version, timeout_seconds=int(seconds)
        )
        for event in stream:
            obj = event["object"]
            meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
            names.append(f"{kind}/{meta['name'] if isinstance(meta, dict) else meta.name}")
        return names

    with ThreadPoolExecutor(len(lists)) as pool:
        seen = [n for names in pool.map(watch, lists) for n in names]
    counts: dict[str, int] = {}
    for name in seen:
        counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture
def log_offset(operator: OperatorProcess) -> Iterator[int]:
    yield operator.log_path.stat().st_size


def test_every_accepted_spec_is_served_or_degraded_and_the_operator_holds(
    api_client: client.ApiClient, namespace: str, operator: OperatorProcess, log_offset: int
) -> None:
    custom = client.CustomObjectsApi(api_client)
    pid = operator.process.pid
    tally = Tally()
    started = time.monotonic()
    print(f"spec fuzz: seed {SEED}, {EXAMPLES} accepted examples")

    @seed(SEED)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=SEED == 0,
        database=None,
        suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
    )
    @given(spec=specs())
    def create(spec: dict[str, Any]) -> None:
        tally.generated += 1
        name = f"fz-{tally.generated}"
        body = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        try:
            made = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        except ApiException as e:
            assert e.status == 422, (e.status, e.body, spec)  # refused, not broken
            tally.refused += 1
            cause = re.findall(r"spec\.[A-Za-z.\[\]0-9]+", e.body or "")
            key = cause[0] if cause else "other"
            tally.refusals[key] = tally.refusals.get(key, 0) + 1
            reject()
        tally.created.append(Created(name, spec, int(made["metadata"]["generation"])))

    create()
    generated_in = time.monotonic() - started
    accepted = {c.name: c for c in tally.created}
    assert len(accepted) >= EXAMPLES * 0.8, (len(accepted), tally.refusals)

    # 1. Served or Degraded, for the current generation.
    def settled() -> dict[str, str] | NotYet:
        deployments = {
            d.metadata.name
            for d in client.AppsV1Api(api_client).list_namespaced_deployment(namespace).items
        }
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        results = {md["metadata"]["name"]: outcome(md, deployments) for md in items}
        pending = {n: r for n, r in results.items() if isinstance(r, NotYet)}
        if pending:
            first = sorted(pending)[0]
            return NotYet(
                f"{len(pending)} not settled, e.g. {pending[first]!r}: {accepted[first].spec}"
            )
        return {n: str(r) for n, r in results.items()}

    results = wait_for(settled, 60, "every ModelDeployment served or Degraded", interval=0.5)
    converged_in = time.monotonic() - started - generated_in
    served = sum(1 for r in results.values() if r == "served")
    reasons: dict[str, int] = {}
    for r in results.values():
        if r.startswith("degraded:"):
            reasons[r.removeprefix("degraded:")] = reasons.get(r.removeprefix("degraded:"), 0) + 1
    examples: dict[str, str] = {}
    for md in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        degraded = condition(md, "Degraded")
        if degraded.get("status") == "True":
            examples.setdefault(degraded["reason"], str(degraded.get("message"))[:160])

    # Calm means rolled out: served objects' pods Ready (KWOK takes a few seconds), or
    # Degraded. Only then is any write a write the operator did not need.
    def quiet() -> bool | NotYet:
        items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
        busy = [
            md["metadata"]["name"]
            for md in items
            if condition(md, "Degraded").get("status") != "True"
            and condition(md, "Progressing").get("reason") != "RolloutComplete"
        ]
        return not busy or NotYet(f"still rolling out: {busy}")

    wait_for(quiet, 60, "every served ModelDeployment rolled out", interval=0.5)

    # 4. No hot loop: passes and writes over a calm window (the watches end it).
    passes_before = reconcile_passes(operator)
    writes = count_writes(api_client, namespace, CALM_SECONDS)
    passes = reconcile_passes(operator) - passes_before
    per_owner: dict[str, int] = {}
    for key, n in writes.items():
        owner = key.split("/", 1)[1]
        per_owner[owner] = per_owner.get(owner, 0) + n

    # 3. The spec is the user's: generation as created, no spec field in our managers'.
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    for md in items:
        made = accepted[md["metadata"]["name"]]
        assert md["metadata"]["generation"] == made.generation, (md["metadata"], made.spec)
        for entry in md["metadata"].get("managedFields") or []:
            if entry.get("manager") in MANAGERS:
                assert "f:spec" not in (entry.get("fieldsV1") or {}), (entry, made.spec)

    # 2. The operator: same process, no traceback since the test started.
    assert operator.alive() and operator.process.pid == pid
    with operator.log_path.open("rb") as log:
        log.seek(log_offset)
        new_log = log.read().decode(errors="replace")
    assert "Traceback" not in new_log, new_log[new_log.index("Traceback") - 2000 :][:6000]

    busiest = max(per_owner.items(), key=lambda kv: kv[1], default=("-", 0))
    print(
        f"spec fuzz: {tally.generated} generated, {tally.refused} refused at create "
        f"({tally.refusals}), {len(accepted)} accepted in {generated_in:.1f}s; converged in "
        f"{converged_in:.1f}s: {served} served, {len(accepted) - served} degraded {reasons}; "
        f"calm {CALM_SECONDS:g}s: {passes:g} reconcile passes "
        f"({passes / len(accepted):.2f}/object), {sum(writes.values())} writes "
        f"({sum(writes.values()) / len(accepted):.2f}/object, busiest {busiest})"
    )
    assert passes / len(accepted) <= PASSES_PER_OBJECT, passes
    assert sum(writes.values()) / len(accepted) <= WRITES_PER_OBJECT, writes
    # A hot loop on one object hides in a mean: no object written more than twice.
    if busiest[1] > 2:
        md = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, busiest[0])
        mine = {k: n for k, n in writes.items() if k.endswith(f"/{busiest[0]}")}
        raise AssertionError(
            f"{busiest[0]} written {busiest[1]} times while calm ({mine}); "
            f"spec {accepted[busiest[0]].spec}; status {json.dumps(md.get('status'))[:1500]}"
        )
    for reason, message in sorted(examples.items()):
        print(f"  {reason}: {message}")
