"""hack/build-argocd.sh and its wrapper modules agree: the versions the script names
(and the e2e harness reads to find the bin directory) are the ones go.mod pins."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = (REPO / "hack" / "build-argocd.sh").read_text()
ARGOCD_MOD = (REPO / "hack" / "argocd" / "go.mod").read_text()
KUSTOMIZE_MOD = (REPO / "hack" / "argocd" / "kustomize" / "go.mod").read_text()


def script_var(name: str) -> str:
    match = re.search(rf"^{name}=(\S+)", SCRIPT, re.MULTILINE)
    assert match, f"{name}= not found in hack/build-argocd.sh"
    return match.group(1)


def required(mod: str, path: str) -> str:
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(path)} (v\S+)", mod, re.MULTILINE)
    assert match, f"{path} not required"
    return match.group(1)


def test_argo_cd_and_its_gitops_engine_are_pinned_at_the_scripts_version() -> None:
    version = script_var("ARGOCD_VERSION")
    assert required(ARGOCD_MOD, "github.com/argoproj/argo-cd/v3") == version
    assert required(ARGOCD_MOD, "github.com/argoproj/argo-cd/gitops-engine/v3") == version
    # Argo CD's own go.mod replaces gitops-engine with ./gitops-engine; here it is the
    # published module.
    assert "gitops-engine/v3 =>" not in ARGOCD_MOD


def test_argo_cds_kubernetes_replaces_are_kept() -> None:
    replaced = re.findall(r"^replace (k8s\.io/\S+) => \1 (v\S+)$", ARGOCD_MOD, re.MULTILINE)
    assert len(replaced) >= 30, replaced
    assert len({version for _, version in replaced}) == 1, replaced


def test_the_main_package_is_kept_by_the_tools_file() -> None:
    tools = (REPO / "hack" / "argocd" / "tools.go").read_text()
    assert "//go:build tools" in tools
    assert '_ "github.com/argoproj/argo-cd/v3/cmd"' in tools
    assert "github.com/argoproj/argo-cd/v3/cmd" in SCRIPT


def test_kustomize_is_pinned_at_the_scripts_version() -> None:
    assert "tool sigs.k8s.io/kustomize/kustomize/v5" in KUSTOMIZE_MOD
    assert required(KUSTOMIZE_MOD, "sigs.k8s.io/kustomize/kustomize/v5") == script_var(
        "KUSTOMIZE_VERSION"
    )


def test_the_toolchain_satisfies_both_modules() -> None:
    toolchain = script_var("GO_TOOLCHAIN")
    for mod in (ARGOCD_MOD, KUSTOMIZE_MOD):
        go = re.search(r"^go (\S+)$", mod, re.MULTILINE)
        assert go
        wanted = tuple(int(p) for p in go.group(1).split("."))
        have = tuple(int(p) for p in toolchain.removeprefix("go").split("."))
        assert have >= wanted, (toolchain, go.group(1))


def test_the_bin_directory_is_where_the_harness_looks() -> None:
    assert 'bin="$cache/bin/argocd-$ARGOCD_VERSION-kustomize-$KUSTOMIZE_VERSION"' in SCRIPT
    harness = (REPO / "tests" / "e2e" / "harness" / "argocd.py").read_text()
    assert 'f"argocd-{argocd}-kustomize-{kustomize}"' in harness
