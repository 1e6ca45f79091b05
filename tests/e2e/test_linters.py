"""Linters nobody here wrote, on what we ship: the chart (rendered with its defaults and
with every optional part on, tests/e2e/linters/full-values.yaml) and manifests/ (as
`kubectl kustomize` renders it).

- `helm lint --strict` (the control plane's helm): no warning, no error.
- kubeconform in strict mode (hack/build-kubeconform.sh) against schemas written from
  this session's API server (its OpenAPI v3) and from crds/ (harness/kube_schemas.py):
  every object valid, and every ModelDeployment of examples/; it skips only the kinds
  tests/e2e/linters/accepted-findings.yaml lists (no schema here). Control objects with
  an unknown field or a wrong type are refused, so the schemas are strict indeed.
- checkov (hack/install-checkov.sh, its own venv) on the same renderings: every failed
  check is one the accepted list names for that object, with its reason, and every
  accepted finding still occurs (a fixed one leaves the list).

The accepted findings are also listed in docs/install.md ("What the linters say").
"""

from __future__ import annotations

import fnmatch
import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from harness import binaries
from harness.kube_schemas import LOCATION_TEMPLATE, api_server_schemas, crd_schemas, write_schemas

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
CHART = REPO / "charts" / "openmodel"
FULL_VALUES = HERE / "linters" / "full-values.yaml"
ACCEPTED_FILE = HERE / "linters" / "accepted-findings.yaml"
INSTALL_DOC = REPO / "docs" / "install.md"
RELEASE_NAMESPACE = "openmodel-system"
# The control plane's version: the chart's kubeVersion is checked against it (helm's own
# default is far older) and kubeconform is told it.
_K8S_VERSION = re.search(r"^K8S_VERSION=v(\S+)$", binaries.BUILD_SCRIPT.read_text(), re.MULTILINE)
assert _K8S_VERSION is not None, f"no K8S_VERSION= in {binaries.BUILD_SCRIPT}"
KUBE_VERSION = _K8S_VERSION.group(1)
HELM_VALUES = {"chart-defaults": [], "chart-full-values": ["-f", str(FULL_VALUES)]}


def run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def helm() -> Path:
    exe = binaries.bin_dir() / "helm"
    assert exe.is_file(), f"helm not built at {exe}: run `bash hack/build-control-plane.sh`"
    return exe


@pytest.fixture(scope="module")
def accepted() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(ACCEPTED_FILE.read_text())
    return loaded


@pytest.fixture(scope="module")
def rendered(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """What is applied: the chart with either values, and manifests/ through kustomize."""
    out = tmp_path_factory.mktemp("rendered")
    files = {}
    for name, values in HELM_VALUES.items():
        done = run([str(helm), "template", "openmodel", str(CHART), "--namespace",
                    RELEASE_NAMESPACE, "--kube-version", KUBE_VERSION, *values])  # fmt: skip
        assert done.returncode == 0, done.stderr
        files[name] = out / f"{name}.yaml"
        files[name].write_text(done.stdout)
    kubectl = binaries.require_bin_dir() / "kubectl"
    done = run([str(kubectl), "kustomize", str(REPO / "manifests")])
    assert done.returncode == 0, done.stderr
    files["manifests"] = out / "manifests.yaml"
    files["manifests"].write_text(done.stdout)
    return files


# -- helm lint ---------------------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(HELM_VALUES))
def test_helm_lint_strict(helm: Path, values: str) -> None:
    done = run([str(helm), "lint", "--strict", "--kube-version", KUBE_VERSION, str(CHART),
                *HELM_VALUES[values]])  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


# -- kubeconform -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubeconform() -> Path:
    """Built once (seconds after the control-plane build; it shares its Go caches)."""
    built = run(["bash", str(REPO / "hack" / "build-kubeconform.sh")], timeout=1200)
    assert built.returncode == 0, built.stderr
    return Path(built.stdout.strip().splitlines()[-1]) / "kubeconform"


@pytest.fixture(scope="module")
def schema_dir(api_client: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("kubeconform-schemas")
    built_in = write_schemas(directory, api_server_schemas(api_client))
    assert "deployment-apps-v1.json" in built_in and "service-v1.json" in built_in, built_in
    ours = write_schemas(directory, crd_schemas(sorted((REPO / "crds").glob("*.yaml"))))
    assert "modeldeployment-openmodel-v1alpha1.json" in ours, ours
    return directory


@dataclass(frozen=True)
class Verdict:
    source: str  # the rendering
    kind: str
    name: str
    status: str  # valid, invalid, error, skipped, empty
    msg: str


def kubeconform_verdicts(
    exe: Path, schemas: Path, files: dict[str, Path], skip: list[str]
) -> list[Verdict]:
    argv = [str(exe), "-strict", "-summary", "-verbose", "-output", "json",
            "-kubernetes-version", KUBE_VERSION,
            "-schema-location", str(schemas / LOCATION_TEMPLATE)]  # fmt: skip
    if skip:
        argv += ["-skip", ",".join(skip)]
    by_path = {str(path): source for source, path in files.items()}
    done = run([*argv, *by_path])
    assert done.stdout, f"kubeconform printed nothing: {done.stderr}"
    report = json.loads(done.stdout)
    return [
        Verdict(by_path[r["filename"]], r["kind"], r["name"], r["status"].removeprefix("status"),
                r.get("msg", ""))
        for r in report["resources"]
    ]  # fmt: skip


@pytest.mark.cluster
def test_kubeconform_strict_finds_every_object_valid(
    kubeconform: Path, schema_dir: Path, rendered: dict[str, Path], accepted: dict[str, Any]
) -> None:
    skip = [entry["kind"] for entry in accepted["kubeconform"]["skipped"]]
    # The examples too: they are what the CRDs' schemas are for.
    examples = {f"examples/{p.name}": p for p in sorted((REPO / "examples").glob("*.yaml"))}
    verdicts = kubeconform_verdicts(kubeconform, schema_dir, rendered | examples, skip)
    statuses = {v.status.lower() for v in verdicts}
    bad = [v for v in verdicts if v.status.lower() not in ("valid", "skipped")]
    assert not bad, "\n".join(f"{v.source}: {v.kind}/{v.name}: {v.status} {v.msg}" for v in bad)
    assert "valid" in statuses
    # Every rendering and example was read.
    for source in rendered | examples:
        assert [v for v in verdicts if v.source == source and v.status.lower() == "valid"]
    skipped = {v.kind for v in verdicts if v.status.lower() == "skipped"}
    assert skipped == set(skip), f"accepted skips never used: {set(skip) - skipped}"


@pytest.mark.cluster
def test_kubeconform_strict_refuses_an_unknown_field(
    kubeconform: Path, schema_dir: Path, tmp_path: Path
) -> None:
    """The schemas are closed: a misspelt field of a built-in kind and of ours is an error,
    and so is a wrong type (the check kubeconform's strict mode exists for)."""
    control = tmp_path / "control.yaml"
    control.write_text(yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "typo"},
         "spec": {"replicaz": 1, "selector": {"matchLabels": {"a": "b"}},
                  "template": {"metadata": {"labels": {"a": "b"}},
                               "spec": {"containers": [{"name": "c", "image": "i"}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "port"},
         "spec": {"ports": [{"port": "eighty"}]}},
        {"apiVersion": "openmodel.dev/v1alpha1", "kind": "ModelDeployment",
         "metadata": {"name": "typo"},
         "spec": {"model": "m", "gpu": {"type": "nvidia-l4"}, "replicaz": 1}},
    ]))  # fmt: skip
    verdicts = {
        v.kind: v for v in kubeconform_verdicts(kubeconform, schema_dir, {"control": control}, [])
    }
    assert {kind: v.status.lower() for kind, v in verdicts.items()} == {
        "Deployment": "invalid",
        "Service": "invalid",
        "ModelDeployment": "invalid",
    }, verdicts
    assert "'replicaz' not allowed" in verdicts["Deployment"].msg, verdicts
    assert "'replicaz' not allowed" in verdicts["ModelDeployment"].msg, verdicts
    assert "/spec/ports/0/port" in verdicts["Service"].msg, verdicts


# -- checkov -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkov() -> Path:
    where = run(["bash", str(REPO / "hack" / "install-checkov.sh"), "--dir"])
    env = Path(where.stdout.strip())
    assert (env / ".openmodel-complete").is_file(), (
        f"checkov is not installed in {env}: run `bash hack/install-checkov.sh` "
        "(hack/test.sh runs it through hack/bootstrap.sh)"
    )
    return env / "bin" / "checkov"


@dataclass(frozen=True)
class Finding:
    check: str
    resource: str  # Kind.namespace.name, as checkov names it
    source: str
    title: str


@dataclass(frozen=True)
class CheckovRun:
    findings: list[Finding]
    scanned: set[str]  # the renderings with at least one check run on them
    parsing_errors: int


def run_checkov(exe: Path, files: dict[str, Path]) -> CheckovRun:
    by_path = {str(path): source for source, path in files.items()}
    argv = [str(exe), "--framework", "kubernetes", "--output", "json", "--compact",
            "--skip-download"]  # fmt: skip
    for path in by_path:
        argv += ["--file", path]
    done = run(argv, timeout=600)
    # 0: nothing failed, 1: some checks failed; anything else is checkov's own error.
    assert done.returncode in (0, 1), done.stderr[-3000:]
    reports = json.loads(done.stdout)
    if isinstance(reports, dict):
        reports = [reports]
    findings, scanned, parsing_errors = [], set(), 0
    for report in reports:
        results = report.get("results", {})
        parsing_errors += report.get("summary", {}).get("parsing_errors", 0)
        for passed in results.get("passed_checks", []):
            scanned.add(by_path[passed["file_abs_path"]])
        for failed in results.get("failed_checks", []):
            source = by_path[failed["file_abs_path"]]
            scanned.add(source)
            findings.append(
                Finding(failed["check_id"], failed["resource"], source, failed["check_name"])
            )
    return CheckovRun(findings, scanned, parsing_errors)


def accepted_for(finding: Finding, entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    for entry in entries:
        if entry["check"] == finding.check and any(
            fnmatch.fnmatchcase(finding.resource, pattern) for pattern in entry["resources"]
        ):
            return entry
    return None


def test_checkov_finds_only_the_accepted_findings(
    checkov: Path, rendered: dict[str, Path], accepted: dict[str, Any]
) -> None:
    entries = accepted["checkov"]
    scan = run_checkov(checkov, rendered)
    assert scan.parsing_errors == 0 and scan.scanned == set(rendered), scan
    findings = scan.findings
    new = sorted({f"{f.check} {f.resource} ({f.source}): {f.title}"
                  for f in findings if accepted_for(f, entries) is None})  # fmt: skip
    assert not new, "checkov findings not in the accepted list:\n" + "\n".join(new)
    used = [entry for f in findings if (entry := accepted_for(f, entries)) is not None]
    stale = [entry["check"] for entry in entries if entry not in used]
    assert not stale, f"accepted findings checkov no longer reports (remove them): {stale}"


def test_accepted_findings_are_justified_and_documented(accepted: dict[str, Any]) -> None:
    doc = INSTALL_DOC.read_text()
    entries = [*accepted["checkov"], *accepted["kubeconform"]["skipped"]]
    for entry in entries:
        assert len(entry["why"].split()) >= 8, f"say why: {entry}"
        name = entry.get("check") or entry["kind"]
        assert f"`{name}`" in doc, f"{name} is accepted but docs/install.md does not name it"
