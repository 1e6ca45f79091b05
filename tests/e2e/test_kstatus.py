"""ModelDeployments as Flux reads them: the real kstatus library (sigs.k8s.io/cli-utils,
built from its Go module by hack/build-kstatus.sh into hack/kstatus's small program)
computes the status of live ModelDeployments on the real API server, fetched with the
cluster's kubeconfig, and each verdict must be the one docs/gitops.md's table states.

The crash loop is the real llama-server (hack/install-llama-server.sh) on a process node,
given a flag it does not know: it exits at once, and the node restarts it.
Each object is also judged under the Flux healthCheckExprs docs/gitops.md shows, evaluated
with cel-go as Flux evaluates them (hack/kstatus/flux.go).
The adapter failure is written by the test under the adapter loop's field manager
(openmodel-adapters) with the adapter loop's own status builder, as the loop writes it
after an engine refuses a load: the suite's engines on KWOK nodes load no adapter. The
ModelDeployment declares none, so the running adapter loop leaves that status alone,
and the reconciler's pass (which a status change from another writer queues) derives
Stalled/Reconciling from it.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from openmodel.adapters.status import PodReport, adapters_status
from openmodel.kube.calls import ADAPTERS_FIELD_MANAGER
from openmodel.kube.status_writer import apply_loop_status

from harness import Cluster, NotYet, describe_namespace, wait_for
from harness.process_nodes import llama_server_root
from openmodel_fixtures import (
    GROUP,
    PLURAL,
    REPO,
    SMALL_MODEL_SPEC,
    VERSION,
    OperatorProcess,
    condition,
    create_md,
    get_md,
    load_example,
)
from real_engine.cluster_objects import engine_namespace

pytestmark = pytest.mark.cluster

GITOPS_DOC = REPO / "docs" / "gitops.md"
NAME = "llama70b-awq"  # the example's name


def documented_verdicts() -> dict[str, tuple[str, str]]:
    """docs/gitops.md, "What kstatus says": the first column -> (kstatus, Flux with the
    documented healthCheckExprs), bold dropped."""
    text = GITOPS_DOC.read_text()
    section = text.split("### What kstatus says", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [re.sub(r"[*`]", "", c.strip()) for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and not set(cells[0]) <= set("-") and cells[0] != "the ModelDeployment":
            rows[cells[0]] = (cells[2], cells[3])
    return rows


def documented_kustomization() -> str:
    """The Flux Kustomization docs/gitops.md shows, with its healthCheckExprs."""
    blocks = re.findall(r"```yaml\n(.*?)```", GITOPS_DOC.read_text(), re.DOTALL)
    (found,) = [b for b in blocks if "kind: Kustomization" in b and "healthCheckExprs" in b]
    return found


DOC = documented_verdicts()


@dataclass(frozen=True)
class Judge:
    """The kstatus program, with the documented Flux expressions."""

    exe: Path
    kustomization: Path
    kubeconfig: Path

    def _run(self, args: list[str], stdin: str | None = None) -> dict[str, Any]:
        out = subprocess.run(
            [str(self.exe), "-flux", str(self.kustomization), *args],
            input=stdin, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)  # type: ignore[no-any-return]

    def live(self, namespace: str, name: str) -> dict[str, Any]:
        """The verdicts on the object as the API server serves it now."""
        return self._run(["-kubeconfig", str(self.kubeconfig), "-n", namespace, name])

    def of(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self._run(["-"], json.dumps(obj))


@pytest.fixture(scope="module")
def kstatus_bin() -> Path:
    """Built once (seconds after the control-plane build; it shares its Go caches)."""
    built = subprocess.run(
        ["bash", str(REPO / "hack" / "build-kstatus.sh")],
        capture_output=True, text=True, timeout=1200, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    return Path(built.stdout.strip().splitlines()[-1]) / "kstatus"


@pytest.fixture(scope="module")
def kustomization(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("flux") / "kustomization.yaml"
    path.write_text(documented_kustomization())
    return path


@pytest.fixture
def judge(kstatus_bin: Path, kustomization: Path, cluster: Cluster) -> Judge:
    return Judge(kstatus_bin, kustomization, cluster.kubeconfig)


def small_md(namespace: str, **spec: Any) -> dict[str, Any]:
    return load_example("llama70b-awq.yaml", namespace, **{**SMALL_MODEL_SPEC, **spec})


def settled(
    api: client.ApiClient, namespace: str, want: dict[str, tuple[str, str]], generation: int = 1
) -> dict[str, Any]:
    """Wait until the operator judged `generation` and each condition type has the
    (status, reason) wanted."""

    def check() -> dict[str, Any] | NotYet:
        md = get_md(api, namespace, NAME)
        if (md.get("status") or {}).get("observedGeneration") != generation:
            return NotYet(md.get("status"))
        for type_, (status, reason) in want.items():
            c = condition(md, type_)
            if (c.get("status"), c.get("reason")) != (status, reason):
                return NotYet(md["status"]["conditions"])
        return md

    return wait_for(check, 60, lambda: describe_namespace(api, namespace))


def assert_documented(verdict: dict[str, Any], case: str) -> None:
    # An expression that cannot be evaluated is what kstatus's poller reports Unknown.
    flux = "Unknown" if verdict.get("fluxError") else verdict.get("flux")
    print(f"kstatus | {case} | {verdict['status']} | {flux} | {verdict['message'][:80]}")
    assert (verdict["status"], flux) == DOC[case], (case, verdict)


def test_doc_table_lists_every_case_checked_here() -> None:
    assert set(DOC) == {
        "serving",
        "scaled to zero",
        "unknown accelerator, nothing deployed",
        "refused edit while the old pods serve",
        "adapter refused by the engine",
        "adapters still loading",
        "engine crash loop",
        "spec edited, the operator has not looked yet",
        "no status yet (the operator has not looked)",
    }


ARGOCD_TO_KSTATUS = {"Healthy": "Current", "Progressing": "InProgress", "Degraded": "Failed"}


def test_argocd_testdata_reads_the_same_to_kstatus(judge: Judge) -> None:
    """Argo CD's Healthy/Progressing/Degraded for every argocd/testdata object is kstatus's
    Current/InProgress/Failed, and the Flux expressions' too; the one documented exception
    is the object before the operator's first pass."""
    cases = yaml.safe_load((REPO / "argocd" / "health_test.yaml").read_text())["tests"]
    for case in cases:
        obj = yaml.safe_load((REPO / "argocd" / case["inputPath"]).read_text())
        verdict = judge.of(obj)
        expected = ARGOCD_TO_KSTATUS[case["healthStatus"]["status"]]
        if "status" not in obj:
            assert (verdict["status"], bool(verdict.get("fluxError"))) == ("Current", True)
            continue
        assert (verdict["status"], verdict.get("flux")) == (expected, expected), (case, verdict)


def test_serving_then_refused_edit_then_stale_generation(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    judge: Judge,
) -> None:
    created = create_md(api_client, small_md(namespace))
    # The object exactly as the API server answered the create: no status yet.
    assert "status" not in created
    assert_documented(judge.of(created), "no status yet (the operator has not looked)")

    settled(api_client, namespace, {"Ready": ("True", "Ready"), "Stalled": ("False", "AsExpected")})
    assert_documented(judge.live(namespace, NAME), "serving")

    custom = client.CustomObjectsApi(api_client)
    edit = {"spec": {"gpu": {"type": "amd-mi300x", "count": 1}}}
    edited = custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, NAME, edit)
    # The API server's answer to the edit: generation 2 over a status of generation 1.
    assert edited["metadata"]["generation"] == 2 and edited["status"]["observedGeneration"] == 1
    assert_documented(judge.of(edited), "spec edited, the operator has not looked yet")

    md = settled(
        api_client,
        namespace,
        {"Ready": ("True", "Ready"), "Degraded": ("True", "UnknownAccelerator")},
        generation=2,
    )
    assert condition(md, "Stalled")["reason"] == "UnknownAccelerator"
    verdict = judge.live(namespace, NAME)
    assert_documented(verdict, "refused edit while the old pods serve")
    assert "amd-mi300x" in verdict["message"]


def test_unknown_accelerator_fails(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    judge: Judge,
) -> None:
    create_md(api_client, small_md(namespace, gpu={"type": "amd-mi300x", "count": 1}))
    settled(api_client, namespace, {"Degraded": ("True", "UnknownAccelerator"),
                                    "Ready": ("False", "NotDeployed")})  # fmt: skip
    verdict = judge.live(namespace, NAME)
    assert_documented(verdict, "unknown accelerator, nothing deployed")
    assert "amd-mi300x" in verdict["message"]


def test_scaled_to_zero_is_current(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    judge: Judge,
) -> None:
    create_md(api_client, small_md(namespace, replicas=0))
    settled(api_client, namespace, {"Ready": ("True", "ScaledToZero"),
                                    "Reconciling": ("False", "ScaledToZero")})  # fmt: skip
    assert_documented(judge.live(namespace, NAME), "scaled to zero")


def test_adapters_loading_then_refused(
    api_client: client.ApiClient,
    namespace: str,
    operator: OperatorProcess,
    judge: Judge,
) -> None:
    create_md(api_client, small_md(namespace))
    md = settled(api_client, namespace, {"Ready": ("True", "Ready")})
    pods = client.CoreV1Api(api_client).list_namespaced_pod(
        namespace, label_selector=f"openmodel.dev/model-deployment={NAME}"
    )
    pod = pods.items[0].metadata.name

    def write_adapter_status(errors: dict[str, str]) -> None:
        status = adapters_status(["legal"], [PodReport(pod, frozenset())], errors, 1)
        # Without `adapters` the running loop, seeing none declared, leaves it alone.
        del status["adapters"]
        observed = get_md(api_client, namespace, NAME).get("status")
        key = (namespace, NAME)
        assert apply_loop_status(api_client, key, status, observed, ADAPTERS_FIELD_MANAGER)

    write_adapter_status({})
    settled(api_client, namespace, {"AdaptersReady": ("False", "AdapterMissing"),
                                    "Reconciling": ("True", "AdapterMissing")})  # fmt: skip
    assert_documented(judge.live(namespace, NAME), "adapters still loading")

    write_adapter_status({"legal": "HTTP 500: LoRA rank 64 is greater than max_lora_rank 16."})
    md = settled(api_client, namespace, {"AdaptersReady": ("False", "AdapterFailed"),
                                         "Stalled": ("True", "AdapterFailed")})  # fmt: skip
    assert condition(md, "Degraded")["status"] == "False"
    verdict = judge.live(namespace, NAME)
    assert_documented(verdict, "adapter refused by the engine")
    assert "max_lora_rank" in verdict["message"]


@pytest.mark.real_engine
def test_crash_loop_fails(
    api_client: client.ApiClient,
    operator: OperatorProcess,
    cluster: Cluster,
    judge: Judge,
    tmp_path: Path,
) -> None:
    assert (llama_server_root() / "bin" / "llama-server").is_file(), (
        "llama-server is not built: run `bash hack/install-llama-server.sh`"
    )
    model_file = tmp_path / "empty.gguf"
    model_file.write_bytes(b"")  # never read: the flag fails first
    with engine_namespace(api_client, cluster, "e2e-kstatus-crash", model_file) as namespace:
        body = load_example("llama70b-awq.yaml", namespace)
        body["spec"] = {
            "model": "pvc://tiny/empty.gguf",
            "engine": "llamacpp",
            "quantization": "gguf",
            "gpu": {"type": "nvidia-a10g", "count": 1},  # the process nodes
            "maxModelLen": 2048,
            "args": ["--no-such-flag"],
        }
        create_md(api_client, body)
        md = settled(api_client, namespace, {"Degraded": ("True", "EngineCrashLoop"),
                                             "Stalled": ("True", "EngineCrashLoop")})  # fmt: skip
        assert condition(md, "Ready")["status"] == "False"
        verdict = judge.live(namespace, NAME)
        assert_documented(verdict, "engine crash loop")
        assert "--no-such-flag" in verdict["message"]
