"""The health check in Argo CD's own Lua VM (gopher-lua, with Argo CD's libraries and
its way of handing the object over), offline: `argocd admin settings resource-overrides
health FILE --argocd-cm-path argocd/argocd-cm.yaml` over every argocd/testdata object,
compared with argocd/health_test.yaml, plus edge cases the testdata does not spell out.

tests/unit/test_argocd_health.py runs the same cases under a plain Lua 5.1 in
milliseconds and without the Argo CD build; this is the evaluation Argo CD really does,
reading the check from the shipped ConfigMap.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import argocd as argo

pytestmark = pytest.mark.argocd

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "argocd"
CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]


def argocd_health(path: Path) -> tuple[str, str]:
    """(status, message) as Argo CD evaluates the shipped argocd-cm's check for the object."""
    exe = argo.require_bin_dir() / "argocd"
    result = subprocess.run(
        [str(exe), "admin", "settings", "resource-overrides", "health", str(path),
         "--argocd-cm-path", str(ARGOCD / "argocd-cm.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("STATUS: "), out
    first, _, rest = out.partition("\n")
    assert rest.startswith("MESSAGE: "), out
    return first.removeprefix("STATUS: "), rest.removeprefix("MESSAGE: ").removesuffix("\n")


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_argocd_evaluates_each_testdata_object_as_expected(case: dict[str, Any]) -> None:
    expected = case["healthStatus"]
    assert argocd_health(ARGOCD / case["inputPath"]) == (expected["status"], expected["message"])


def test_the_binary_is_the_pinned_version() -> None:
    exe = argo.require_bin_dir() / "argocd"
    out = subprocess.run(
        [str(exe), "version", "--client", "--short"], capture_output=True, text=True, check=True
    ).stdout
    assert argo.version() in out, out


def _healthy() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load((ARGOCD / "testdata" / "healthy.yaml").read_text()))


def _edge_cases() -> list[tuple[str, dict[str, Any], tuple[str, str]]]:
    newer = _healthy()
    newer["metadata"]["generation"] += 1
    reversed_degraded = _healthy()
    conditions = reversed_degraded["status"]["conditions"]
    conditions[2].update(status="True", reason="Unschedulable", message="no GPU left")
    reversed_degraded["status"]["conditions"] = list(reversed(conditions))
    no_conditions = _healthy()
    del no_conditions["status"]["conditions"]
    non_ascii = _healthy()
    text = '2/2 pr\u00eats \u00d7 \u00abok\u00bb "quoted" \\ back'
    non_ascii["status"]["conditions"][0]["message"] = text
    return [
        ("newer-generation", newer, ("Progressing", "waiting for the operator")),
        ("degraded-wins-in-any-order", reversed_degraded, ("Degraded", "no GPU left")),
        ("no-conditions", no_conditions, ("Progressing", "waiting for the Ready condition")),
        ("non-ascii", non_ascii, ("Healthy", text)),
    ]


@pytest.mark.parametrize("name,obj,expected", _edge_cases(), ids=[c[0] for c in _edge_cases()])
def test_argocd_evaluates_edge_cases(
    name: str, obj: dict[str, Any], expected: tuple[str, str], tmp_path: Path
) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(obj, allow_unicode=True))
    assert argocd_health(path) == expected
