"""The Argo CD health check (argocd/health.lua), run by a real Lua 5.1.

Argo CD runs health checks in gopher-lua, which implements Lua 5.1; so this runs the
script under Lua 5.1 too: Debian's `lua5.1` binary (apt package `lua5.1`), or, when
that is missing, lupa's bundled Lua 5.1 (`lupa.lua51`). Which one ran is part of every
test id (e.g. `[lua5.1-healthy]`) and recorded as the `lua_interpreter` property.
With neither, the tests fail: a health check nobody ran is not tested.
OPENMODEL_TEST_LUA=lua5.1 or =lupa runs only that interpreter (to check both).

The expected results live in argocd/health_test.yaml, in Argo CD's own layout.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmodel.adapters.status import ADAPTERS_READY
from openmodel.privacy.egress import Egress, EgressPlan
from openmodel.problems import Problem
from openmodel.reconcile.overflow import OVERFLOW
from openmodel.reconcile.status import (
    DEGRADED,
    EGRESS_OPEN,
    PROGRESSING,
    READY,
    RECONCILING,
    STALLED,
    Observation,
    build_status,
    kstatus_conditions,
)

REPO = Path(__file__).resolve().parents[2]
ARGOCD = REPO / "argocd"
HEALTH_LUA = ARGOCD / "health.lua"
CM_KEY = "resource.customizations.health.openmodel.dev_ModelDeployment"
INSTALL_HINT = "install Debian's Lua 5.1: apt-get update && apt-get install -y lua5.1"


# -- Lua values from Python -------------------------------------------------------


def lua_string(text: str) -> str:
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in '"\\':
            out.append("\\" + char)
        elif 32 <= byte < 127:
            out.append(char)
        else:
            # Three digits always: "\0031" must not read as "\31".
            out.append(f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


def lua_literal(value: Any) -> str:
    """A Lua 5.1 table constructor for a JSON-like value (what Argo CD hands as `obj`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no Lua literal for {value!r}")
        return repr(value)
    if isinstance(value, str):
        return lua_string(value)
    if isinstance(value, Mapping):
        # A JSON null is an absent key to the script, as in Argo CD.
        items = (
            f"[{lua_string(str(k))}] = {lua_literal(v)}" for k, v in value.items() if v is not None
        )
        return "{" + ", ".join(items) + "}"
    if isinstance(value, list | tuple):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def harness(obj: Mapping[str, Any]) -> str:
    """Lua that sets the global `obj` as Argo CD does, runs health.lua, and leaves
    `status\\nmessage` in the local `out`."""
    return "\n".join(
        [
            f"obj = {lua_literal(obj)}",
            f"local chunk = assert(loadfile({lua_string(str(HEALTH_LUA))}))",
            "local hs = chunk()",
            'assert(type(hs) == "table", "health.lua must return a table")',
            'local out = tostring(hs.status) .. "\\n" .. tostring(hs.message)',
        ]
    )


# -- Lua 5.1 interpreters ------------------------------------------------------------


@dataclass(frozen=True)
class Lua51:
    name: str
    version: str
    execute: Callable[[str], str]  # Lua source ending with a local `out` -> out


def _binary(path: str) -> Lua51 | None:
    def execute(source: str) -> str:
        result = subprocess.run(
            [path, "-"],
            input=source + "\nio.write(out)\n",
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f"{path} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    try:
        version = execute("local out = _VERSION")
    except (OSError, AssertionError):
        return None
    return Lua51(Path(path).name, version, execute) if version == "Lua 5.1" else None


def _lupa() -> Lua51 | None:
    try:
        from lupa import lua51
    except ImportError:
        return None

    def execute(source: str) -> str:
        return str(lua51.LuaRuntime().execute(source + "\nreturn out\n"))

    return Lua51("lupa.lua51", execute("local out = _VERSION"), execute)


def find_lua51(choice: str = "") -> Lua51 | None:
    """The first Lua 5.1 found; `choice` (a binary name, or "lupa") allows only that one."""
    if choice == "lupa":
        return _lupa()
    for candidate in (choice,) if choice else ("lua5.1", "lua"):
        path = shutil.which(candidate)
        found = _binary(path) if path else None
        if found is not None:
            return found
    return None if choice else _lupa()


LUA = find_lua51(os.environ.get("OPENMODEL_TEST_LUA", ""))
LUA_ID = LUA.name if LUA else "no-lua5.1"


@pytest.fixture
def lua(record_property: Callable[[str, object], None]) -> Lua51:
    if LUA is None:
        pytest.fail(f"no Lua 5.1 interpreter (Argo CD's Lua dialect): {INSTALL_HINT}")
    record_property("lua_interpreter", f"{LUA.name} ({LUA.version})")
    return LUA


def health(lua: Lua51, obj: Mapping[str, Any]) -> tuple[str, str]:
    status, _, message = lua.execute(harness(obj)).partition("\n")
    return status, message


# -- the cases in health_test.yaml -------------------------------------------------

CASES = yaml.safe_load((ARGOCD / "health_test.yaml").read_text())["tests"]


def load(input_path: str) -> dict[str, Any]:
    return yaml.safe_load((ARGOCD / input_path).read_text())  # type: ignore[no-any-return]


def test_the_interpreter_is_lua_5_1(lua):
    assert lua.version == "Lua 5.1"
    # gopher-lua has no goto/integer division either; a script using them would pass
    # under 5.3 and break in Argo CD. 5.1 rejects `//`:
    with pytest.raises(Exception, match=r"unexpected symbol|'='|syntax"):
        lua.execute("local out = tostring(7 // 2)")


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{LUA_ID}-{Path(c['inputPath']).stem}" for c in CASES]
)
def test_health_of_each_testdata_object(lua, case):
    obj = load(case["inputPath"])
    expected = case["healthStatus"]
    assert health(lua, obj) == (expected["status"], expected["message"])


def test_every_testdata_file_has_an_expected_health():
    listed = {c["inputPath"] for c in CASES}
    on_disk = {f"testdata/{p.name}" for p in (ARGOCD / "testdata").glob("*.yaml")}
    assert listed == on_disk


def test_testdata_covers_every_outcome():
    assert {c["healthStatus"]["status"] for c in CASES} == {"Healthy", "Progressing", "Degraded"}
    reasons = set()
    for case in CASES:
        for cond in (load(case["inputPath"]).get("status") or {}).get("conditions", []):
            if cond["type"] == "Degraded" and cond["status"] == "True":
                reasons.add(cond["reason"])
    assert {"UnknownAccelerator", "Unschedulable", "EngineCrashLoop", "OverflowNotAllowed"} <= (
        reasons
    )


def _operator_status_shape() -> tuple[set[str], set[str]]:
    """The keys status.py writes: (status keys, condition keys)."""
    deployment = {
        "metadata": {"generation": 1},
        "spec": {"replicas": 1},
        "status": {"observedGeneration": 1, "replicas": 1, "readyReplicas": 1},
    }
    obs = Observation(
        generation=1,
        name="x",
        label_selector="openmodel.dev/model-deployment=x",
        endpoint="http://x.ns.svc.cluster.local:8000/v1",
        desired_replicas=1,
        deployment=deployment,
        gpu="1x nvidia-l4",
        problem=Problem("Unschedulable", "m"),
        egress=EgressPlan(Egress.CLOSED, ()),
    )
    status = build_status(obs, None, "2025-01-01T00:00:00Z").status
    return set(status), set(status["conditions"][0])


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_testdata_statuses_have_the_operators_shape(case):
    status = load(case["inputPath"]).get("status")
    if status is None:
        return  # the freshly created object: no status is the shape
    status_keys, condition_keys = _operator_status_shape()
    # `autoscaler` is written by the autoscaler, `adapters`/`adaptersReady` (and the
    # AdaptersReady condition) by the adapter loop, each under its own field manager.
    assert set(status) <= status_keys | {"autoscaler", "sizing", "adapters", "adaptersReady"}
    assert {"observedGeneration", "replicas", "readyReplicas", "reason", "conditions"} <= set(
        status
    )
    types = [c["type"] for c in status["conditions"]]
    assert types[:3] == [READY, PROGRESSING, DEGRADED]
    # EgressOpen: written with the plan it describes (absent only before the first one).
    assert set(types[3:]) <= {EGRESS_OPEN, OVERFLOW, ADAPTERS_READY, STALLED, RECONCILING}
    # kstatus's two, exactly as the operator derives them from the others.
    by_type = {c["type"]: c for c in status["conditions"]}
    derived = kstatus_conditions(
        status["conditions"], by_type.get(ADAPTERS_READY), status["observedGeneration"]
    )
    for cond in derived:
        written = {k: v for k, v in by_type[cond["type"]].items() if k != "lastTransitionTime"}
        assert written == cond
    for cond in status["conditions"]:
        assert set(cond) == condition_keys
        assert cond["status"] in ("True", "False")
    ready, _, degraded = status["conditions"][:3]
    assert status["reason"] == (degraded if degraded["status"] == "True" else ready)["reason"]


def _unknown_fields(value: Any, schema: Mapping[str, Any], path: str) -> list[str]:
    """Fields of `value` the CRD's structural schema does not declare."""
    if isinstance(value, Mapping) and "properties" in schema:
        out = []
        for key, child in value.items():
            if key not in schema["properties"]:
                out.append(f"{path}.{key}")
            else:
                out += _unknown_fields(child, schema["properties"][key], f"{path}.{key}")
        return out
    if isinstance(value, list) and "items" in schema:
        return [
            f
            for i, v in enumerate(value)
            for f in _unknown_fields(v, schema["items"], f"{path}[{i}]")
        ]
    return []


@pytest.mark.parametrize("case", CASES, ids=[Path(c["inputPath"]).stem for c in CASES])
def test_testdata_objects_fit_the_crd_schema(case):
    crd = yaml.safe_load((REPO / "crds" / "modeldeployment.yaml").read_text())
    (version,) = crd["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    obj = load(case["inputPath"])
    assert obj["apiVersion"] == f"{crd['spec']['group']}/{version['name']}"
    assert _unknown_fields({k: obj[k] for k in ("spec", "status") if k in obj}, schema, "") == []


def test_argocd_cm_snippet_is_exactly_health_lua():
    cm = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())
    assert (cm["kind"], cm["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert list(cm["data"]) == [CM_KEY]
    assert cm["data"][CM_KEY] == HEALTH_LUA.read_text(), (
        "argocd/argocd-cm.yaml is stale: run argocd/generate-argocd-cm.sh"
    )


# -- edges the testdata does not spell out -----------------------------------------


def healthy() -> dict[str, Any]:
    return copy.deepcopy(load("testdata/healthy.yaml"))


def test_a_newer_generation_hides_a_ready_status(lua):
    obj = healthy()
    obj["metadata"]["generation"] += 1
    assert health(lua, obj) == ("Progressing", "waiting for the operator")


def test_status_without_observed_generation_is_waiting_for_the_operator(lua):
    obj = healthy()
    del obj["status"]["observedGeneration"]
    assert health(lua, obj) == ("Progressing", "waiting for the operator")


def test_status_without_conditions_is_progressing(lua):
    obj = healthy()
    del obj["status"]["conditions"]
    assert health(lua, obj) == ("Progressing", "waiting for the Ready condition")


def test_degraded_false_and_ready_false_is_progressing_with_the_ready_message(lua):
    obj = healthy()
    ready = obj["status"]["conditions"][0]
    ready.update(status="False", reason="WaitingForPods", message="1/2 replicas ready")
    assert health(lua, obj) == ("Progressing", "1/2 replicas ready")


def test_degraded_wins_over_ready_whatever_the_condition_order(lua):
    obj = healthy()
    conditions = obj["status"]["conditions"]
    conditions[2].update(status="True", reason="Unschedulable", message="no GPU left")
    obj["status"]["conditions"] = list(reversed(conditions))
    assert health(lua, obj) == ("Degraded", "no GPU left")


def test_scaled_to_zero_with_adapters_declared_is_healthy(lua):
    """At zero no pod is there to load adapters on: the adapter loop says NoReadyPods."""
    obj = copy.deepcopy(load("testdata/scaled-to-zero.yaml"))
    obj["status"]["conditions"].append(
        {
            "type": ADAPTERS_READY,
            "status": "False",
            "reason": "NoReadyPods",
            "message": "no ready pod to load adapters on",
            "observedGeneration": 2,
            "lastTransitionTime": "2025-11-20T11:00:00Z",
        }
    )
    assert health(lua, obj) == ("Healthy", "scaled to zero replicas")


def test_scaled_to_zero_as_older_operators_wrote_it_is_healthy(lua):
    obj = copy.deepcopy(load("testdata/scaled-to-zero.yaml"))
    for cond in obj["status"]["conditions"]:
        if cond["type"] == READY:
            cond["status"] = "False"
    assert health(lua, obj) == ("Healthy", "scaled to zero replicas")


def test_non_ascii_text_reaches_the_script_intact(lua):
    obj = healthy()
    obj["status"]["conditions"][0]["message"] = (
        '2/2 pr\u00eats \u00d7 \u00abok\u00bb "quoted" \\ back\nline'
    )
    assert health(lua, obj) == (
        "Healthy",
        '2/2 pr\u00eats \u00d7 \u00abok\u00bb "quoted" \\ back\nline',
    )
