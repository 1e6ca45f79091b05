"""LoRA adapters: spec.adapters / spec.lora parsing, vLLM and TGI rendering, the CRD's
rules and the sizing term."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmodel.accelerators import BUILTIN_ACCELERATORS
from openmodel.api import AdapterSpec, LoraSpec, SpecError, lora_settings
from openmodel.config import PlatformConfig
from openmodel.engines import ENGINES, parse_model_deployment, parse_spec
from openmodel.engines.base import adapter_claims, adapter_path
from openmodel.reconcile.render import adapter_volume_name, render_children
from openmodel.sizing import catalogue as c
from openmodel.sizing.formats import weight_format
from openmodel.sizing.memory import engine_settings, estimate_memory, lora_overhead_bytes

CRD = Path(__file__).resolve().parents[2] / "crds" / "modeldeployment.yaml"
SPEC: dict[str, Any] = {
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "engine": "vllm",
    "gpu": {"type": "nvidia-h100-80gb", "count": 1},
}


def spec_with(**extra: Any) -> dict[str, Any]:
    raw = copy.deepcopy(SPEC)
    raw.update(extra)
    return raw


def md_with(**extra: Any) -> Any:
    return parse_model_deployment(
        {
            "apiVersion": "openmodel.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ns", "uid": "u"},
            "spec": spec_with(**extra),
        }
    )


def pod(md: Any) -> dict[str, Any]:
    template = render_children(md, PlatformConfig(), 1, 1).deployment["spec"]["template"]
    return template  # type: ignore[no-any-return]


def engine_container(md: Any) -> dict[str, Any]:
    return pod(md)["spec"]["containers"][0]  # type: ignore[no-any-return]


def env_of(md: Any) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in engine_container(md)["env"]}


# --- parsing ---------------------------------------------------------------------


def test_no_adapters_no_lora() -> None:
    spec = parse_spec(spec_with())
    assert spec.adapters == () and spec.lora is None and lora_settings(spec) is None


def test_adapters_parse_and_default_lora() -> None:
    spec = parse_spec(
        spec_with(
            adapters=[
                {"name": "sql", "source": "org/sql-lora"},
                {"name": "chat-2", "source": "pvc://loras/chat"},
                {"name": "s3-one", "source": "s3://bucket/a"},
            ]
        )
    )
    assert spec.adapters[0] == AdapterSpec(name="sql", source="org/sql-lora")
    assert spec.lora is None
    assert lora_settings(spec) == LoraSpec(max_rank=16, max_adapters=4)


def test_lora_without_adapters_is_kept() -> None:
    spec = parse_spec(spec_with(lora={"maxRank": 64, "maxAdapters": 2}))
    assert lora_settings(spec) == LoraSpec(max_rank=64, max_adapters=2)
    assert parse_spec(spec_with(lora={})).lora == LoraSpec()


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"adapters": {"name": "x"}}, "spec.adapters"),
        ({"adapters": ["x"]}, "spec.adapters[0]"),
        ({"adapters": [{"source": "org/a"}]}, "spec.adapters[0].name"),
        (
            {"adapters": [{"name": "a", "source": "o/a"}, {"name": "B", "source": "o/b"}]},
            "spec.adapters[1].name",
        ),
        ({"adapters": [{"name": "-a", "source": "o/a"}]}, "spec.adapters[0].name"),
        ({"adapters": [{"name": "a" * 64, "source": "o/a"}]}, "spec.adapters[0].name"),
        (
            {"adapters": [{"name": "a", "source": "o/a"}, {"name": "a", "source": "o/b"}]},
            "spec.adapters[1].name",
        ),
        ({"adapters": [{"name": "a"}]}, "spec.adapters[0].source"),
        ({"adapters": [{"name": "a", "source": 3}]}, "spec.adapters[0].source"),
        ({"adapters": [{"name": "a", "source": "pvc://claim"}]}, "spec.adapters[0].source"),
        ({"adapters": [{"name": "a", "source": "pvc://claim/"}]}, "spec.adapters[0].source"),
        ({"adapters": [{"name": "a", "source": "http://x/y"}]}, "spec.adapters[0].source"),
        ({"adapters": [{"name": "a", "source": "s3://"}]}, "spec.adapters[0].source"),
        ({"adapters": [{"name": "a", "source": "a/b/c"}]}, "spec.adapters[0].source"),
        ({"lora": []}, "spec.lora"),
        ({"lora": {"maxRank": 24}}, "spec.lora.maxRank"),
        ({"lora": {"maxRank": True}}, "spec.lora.maxRank"),
        ({"lora": {"maxAdapters": 0}}, "spec.lora.maxAdapters"),
    ],
)
def test_bad_values_name_their_field(extra: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(**extra))
    assert err.value.field == field


def test_name_may_not_be_the_served_model_name() -> None:
    adapters = [{"name": "ok", "source": "o/a"}, {"name": "llama", "source": "o/b"}]
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(servedModelName="llama", adapters=adapters))
    assert err.value.field == "spec.adapters[1].name"
    # Without servedModelName the served name is the pvc:// path's tail.
    with pytest.raises(SpecError) as err:
        parse_spec(
            spec_with(model="pvc://weights/llama", adapters=[{"name": "llama", "source": "o/a"}])
        )
    assert err.value.field == "spec.adapters[0].name"


def test_object_store_adapters_refused_on_tgi() -> None:
    adapters = [{"name": "a", "source": "o/a"}, {"name": "b", "source": "gs://bucket/b"}]
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(engine="tgi", adapters=adapters))
    assert err.value.field == "spec.adapters[1].source"
    assert err.value.reason == "UnsupportedAdapterSource"
    assert len(parse_spec(spec_with(engine="vllm", adapters=adapters)).adapters) == 2


def test_more_adapters_than_slots_refused() -> None:
    five = [{"name": f"a{i}", "source": f"o/a{i}"} for i in range(5)]
    with pytest.raises(SpecError) as err:
        parse_spec(spec_with(adapters=five))
    assert err.value.field == "spec.adapters" and "maxAdapters is 4" in err.value.message
    with pytest.raises(SpecError):
        parse_spec(spec_with(adapters=five[:3], lora={"maxAdapters": 2}))
    assert len(parse_spec(spec_with(adapters=five, lora={"maxAdapters": 5})).adapters) == 5


# --- engines/base ------------------------------------------------------------------


def test_adapter_path() -> None:
    assert adapter_path("org/sql-lora") == "org/sql-lora"
    assert adapter_path("pvc://loras/team/sql") == "/models/loras/team/sql"
    assert adapter_path("s3://b/sql") == "s3://b/sql"
    assert adapter_path("gs://b/sql") == "gs://b/sql"


def test_adapter_claims_skip_the_model_claim_and_repeat_none() -> None:
    spec = parse_spec(
        spec_with(
            model="pvc://weights/llama",
            lora={"maxAdapters": 5},
            adapters=[
                {"name": "a", "source": "pvc://weights/a"},
                {"name": "b", "source": "pvc://zeta/b"},
                {"name": "c", "source": "pvc://alpha/c"},
                {"name": "d", "source": "pvc://zeta/d"},
                {"name": "e", "source": "org/e"},
            ],
        )
    )
    assert adapter_claims(spec) == ["alpha", "zeta"]


# --- vLLM rendering ---------------------------------------------------------------


def test_vllm_without_lora_has_no_lora_flags_or_env() -> None:
    c_ = engine_container(md_with())
    assert not [a for a in c_["args"] if "lora" in a]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env_of(md_with())


def test_vllm_lora_flags_env_and_no_lora_modules() -> None:
    md = md_with(
        adapters=[{"name": "sql", "source": "org/sql"}], lora={"maxRank": 64, "maxAdapters": 3}
    )
    args = engine_container(md)["args"]
    i = args.index("--enable-lora")
    assert args[i : i + 7] == [
        "--enable-lora",
        "--max-loras",
        "3",
        "--max-lora-rank",
        "64",
        "--max-cpu-loras",
        "3",
    ]
    assert "--lora-modules" not in args and "sql" not in " ".join(args)
    assert env_of(md)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert "LORA_ADAPTERS" not in env_of(md)


def test_vllm_defaults_when_only_adapters_set() -> None:
    args = engine_container(md_with(adapters=[{"name": "a", "source": "o/a"}]))["args"]
    assert args[args.index("--max-loras") + 1] == "4"
    assert args[args.index("--max-lora-rank") + 1] == "16"
    assert args[args.index("--max-cpu-loras") + 1] == "4"


def test_user_env_still_overrides_the_engine_env() -> None:
    md = md_with(
        adapters=[{"name": "a", "source": "o/a"}],
        env=[{"name": "VLLM_ALLOW_RUNTIME_LORA_UPDATING", "value": "False"}],
    )
    names = [e["name"] for e in engine_container(md)["env"]]
    # The user's entry comes after the engine's (only the telemetry switches follow it).
    last = max(i for i, n in enumerate(names) if n == "VLLM_ALLOW_RUNTIME_LORA_UPDATING")
    assert last > names.index("VLLM_ALLOW_RUNTIME_LORA_UPDATING")
    assert env_of(md)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "False"


def test_adapter_claims_mounted_read_only() -> None:
    md = md_with(
        model="pvc://weights/llama",
        adapters=[
            {"name": "a", "source": "pvc://weights/a"},
            {"name": "b", "source": "pvc://loras/b"},
        ],
    )
    template = pod(md)
    volumes = {v["name"]: v for v in template["spec"]["volumes"]}
    mounts = {m["name"]: m for m in template["spec"]["containers"][0]["volumeMounts"]}
    assert volumes["adapter-loras"] == {
        "name": "adapter-loras",
        "persistentVolumeClaim": {"claimName": "loras", "readOnly": True},
    }
    assert mounts["adapter-loras"] == {
        "name": "adapter-loras",
        "mountPath": "/models/loras",
        "readOnly": True,
    }
    # The model's claim is mounted once, as model-weights.
    assert "adapter-weights" not in volumes and "model-weights" in volumes
    # The volume has the same shape as the model's.
    assert volumes["model-weights"]["persistentVolumeClaim"].keys() == {"claimName", "readOnly"}


def test_long_claim_gives_a_valid_volume_name() -> None:
    long_claim = "c" * 63
    name = adapter_volume_name(long_claim)
    assert len(name) <= 63 and name.startswith("adapter-")
    assert name != adapter_volume_name("c" * 62 + "d")
    assert adapter_volume_name("loras") == "adapter-loras"


def test_vllm_template_does_not_change_with_the_adapter_list() -> None:
    """Adapters load at runtime: editing the list must not roll the pods, except when an
    adapter needs a claim that is not mounted yet."""
    lora = {"maxRank": 16, "maxAdapters": 4}
    one = md_with(lora=lora, adapters=[{"name": "a", "source": "pvc://loras/a"}])
    edited = md_with(
        lora=lora,
        adapters=[
            {"name": "b", "source": "org/b"},
            {"name": "c", "source": "pvc://loras/c"},
            {"name": "d", "source": "s3://bucket/d"},
        ],
    )
    assert pod(edited) == pod(one)
    # Another adapter on an already-mounted claim: the same template.
    assert pod(md_with(lora=lora, adapters=[{"name": "x", "source": "pvc://loras/x"}])) == pod(one)
    new_claim = md_with(
        lora=lora,
        adapters=[
            {"name": "a", "source": "pvc://loras/a"},
            {"name": "e", "source": "pvc://more/e"},
        ],
    )
    assert pod(new_claim) != pod(one)
    assert "adapter-more" in {v["name"] for v in pod(new_claim)["spec"]["volumes"]}


def test_vllm_template_same_between_lora_only_and_repo_adapters() -> None:
    lora = {"maxRank": 16, "maxAdapters": 4}
    assert pod(md_with(lora=lora)) == pod(
        md_with(lora=lora, adapters=[{"name": "a", "source": "org/a"}])
    )


# --- TGI rendering ----------------------------------------------------------------


def test_tgi_adapters_in_env_sorted_by_name() -> None:
    md = md_with(
        engine="tgi",
        adapters=[
            {"name": "zeta", "source": "org/zeta"},
            {"name": "alpha", "source": "pvc://loras/alpha"},
        ],
    )
    assert env_of(md)["LORA_ADAPTERS"] == "alpha=/models/loras/alpha,zeta=org/zeta"
    args = engine_container(md)["args"]
    assert not [a for a in args if "lora" in a]
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env_of(md)
    assert "adapter-loras" in {v["name"] for v in pod(md)["spec"]["volumes"]}


def test_tgi_without_adapters_has_no_lora_env() -> None:
    assert "LORA_ADAPTERS" not in env_of(md_with(engine="tgi", lora={"maxAdapters": 2}))


def test_tgi_adapter_change_rolls_the_pods() -> None:
    one = md_with(engine="tgi", adapters=[{"name": "a", "source": "org/a"}])
    two = md_with(engine="tgi", adapters=[{"name": "b", "source": "org/b"}])
    assert pod(one) != pod(two)


# --- CRD ----------------------------------------------------------------------------


def _crd() -> dict[str, Any]:
    return yaml.safe_load(CRD.read_text())  # type: ignore[no-any-return]


def _version(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]  # type: ignore[no-any-return]


def test_crd_adapters_schema() -> None:
    spec = _version(_crd())["schema"]["openAPIV3Schema"]["properties"]["spec"]
    adapters = spec["properties"]["adapters"]
    assert adapters["type"] == "array"
    assert adapters["x-kubernetes-list-type"] == "map"
    assert adapters["x-kubernetes-list-map-keys"] == ["name"]
    item = adapters["items"]
    assert item["required"] == ["name", "source"]
    name = item["properties"]["name"]
    assert name["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" and name["maxLength"] == 63
    assert item["properties"]["source"]["type"] == "string"
    lora = spec["properties"]["lora"]["properties"]
    assert lora["maxRank"]["enum"] == [8, 16, 32, 64, 128, 256, 320, 512]
    assert lora["maxAdapters"]["minimum"] == 1


def test_crd_adapter_cel_rules_name_their_field() -> None:
    spec = _version(_crd())["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r for r in spec["x-kubernetes-validations"] if "adapters" in r["rule"]]
    texts = " ".join(r["rule"] for r in rules)
    assert "servedModelName" in texts
    assert "'tgi'" in texts and "s3://" in texts and "gs://" in texts
    assert "size(self.adapters) <=" in texts and "self.lora.maxAdapters" in texts and ": 4" in texts
    assert len(rules) == 5  # + sglang s3/gs sources, llamacpp has none
    for rule in rules:
        assert rule["fieldPath"] == ".adapters"
        assert "spec.adapters" in rule["message"]


def test_crd_status_and_printer_column() -> None:
    version = _version(_crd())
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    item = status["adapters"]["items"]["properties"]
    assert {k: v["type"] for k, v in item.items()} == {
        "name": "string",
        "loadedPods": "integer",
        "readyPods": "integer",
        "lastError": "string",
    }
    assert status["adaptersReady"]["type"] == "string"
    assert "loraGiBPerGPU" in status["sizing"]["properties"]
    columns = [c_["name"] for c_ in version["additionalPrinterColumns"]]
    assert columns[columns.index("Queue") + 1] == "Adapters"
    adapters_col = version["additionalPrinterColumns"][columns.index("Adapters")]
    assert adapters_col["jsonPath"] == ".status.adaptersReady"


# --- sizing -----------------------------------------------------------------------


H100 = BUILTIN_ACCELERATORS["nvidia-h100-80gb"]
BF16 = weight_format("none", "x")


def test_lora_overhead_formula() -> None:
    # Llama 3.1 8B, 4 slots x rank 16: 4 x 16 x 4096 x 32 x 2 x 4 x 2 = 134,217,728 B.
    assert lora_overhead_bytes(c.LLAMA_31_8B, LoraSpec()) == 134_217_728
    assert lora_overhead_bytes(c.LLAMA_31_8B, None) == 0
    assert lora_overhead_bytes(c.LLAMA_31_8B, LoraSpec(max_rank=32)) == 2 * 134_217_728


def test_lora_in_the_estimate_breakdown() -> None:
    plain = estimate_memory(
        c.LLAMA_31_8B, BF16, H100, 1, 8192, engine_settings(ENGINES["vllm"].memory)
    )
    lora = estimate_memory(
        c.LLAMA_31_8B, BF16, H100, 1, 8192, engine_settings(ENGINES["vllm"].memory, (), LoraSpec())
    )
    assert plain.lora_gib == 0 and "LoRA" not in plain.summary()
    assert "loraGiBPerGPU" not in plain.to_status()
    assert lora.lora_gib == pytest.approx(0.125)
    assert lora.total_gib == pytest.approx(plain.total_gib + 0.125)
    assert "LoRA 0.12" in lora.summary() or "LoRA 0.13" in lora.summary()
    assert lora.to_status()["loraGiBPerGPU"] == pytest.approx(0.12, abs=0.01)
    assert lora.kv_capacity_tokens is not None and plain.kv_capacity_tokens is not None
    assert lora.kv_capacity_tokens < plain.kv_capacity_tokens


def test_tgi_has_no_lora_slot_term() -> None:
    settings = engine_settings(ENGINES["tgi"].memory, (), LoraSpec())
    est = estimate_memory(c.LLAMA_31_8B, BF16, H100, 1, 8192, settings)
    assert est.lora_gib == 0
