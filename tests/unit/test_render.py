"""The pure renderer, field by field, for both engines and every quantization."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from openmodel.api import QUANTIZATIONS, SpecError
from openmodel.config import DEFAULT_ENGINE_IMAGES, PlatformConfig, parse_config
from openmodel.engines import ENGINES, parse_model_deployment
from openmodel.engines.base import quantization_flag
from openmodel.engines.vllm import VLLM
from openmodel.reconcile.render import render_children

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

BASE: dict[str, Any] = {
    "apiVersion": "openmodel.dev/v1alpha1",
    "kind": "ModelDeployment",
    "metadata": {"name": "m", "namespace": "team-a", "uid": "u-1", "generation": 3},
    "spec": {
        "model": "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        "engine": "vllm",
        "quantization": "awq",
        "gpu": {"type": "nvidia-h100-80gb", "count": 2},
        "replicas": 1,
    },
}


def md_with(**spec: Any) -> Any:
    body = copy.deepcopy(BASE)
    body["spec"].update(spec)
    return parse_model_deployment(body)


def container(children: Any) -> dict[str, Any]:
    containers = children.deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def flag(args: list[str], name: str) -> str | None:
    """The value after `name`, asserting the flag appears at most once."""
    assert args.count(name) <= 1, f"{name} repeated in {args}"
    return args[args.index(name) + 1] if name in args else None


def render(md: Any, count: int = 2, replicas: int = 1, config: PlatformConfig | None = None) -> Any:
    return render_children(md, config or PlatformConfig(), count, replicas)


def test_vllm_command_and_every_flag() -> None:
    md = md_with(maxModelLen=32768, servedModelName="llama")
    c = container(render(md, count=2))
    assert c["command"] == ["vllm", "serve"]
    # `vllm serve MODEL`: the model is the first positional; newer vLLM refuses --model.
    assert c["args"] == [
        "hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
        "--served-model-name", "llama",
        "--host", "0.0.0.0",
        "--port", "8000",
        "--tensor-parallel-size", "2",
        "--shutdown-timeout", "50",
        "--quantization", "awq",
        "--max-model-len", "32768",
    ]  # fmt: skip
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert c["image"] == DEFAULT_ENGINE_IMAGES["vllm"]


def test_vllm_served_model_name_defaults_to_repo_id_and_no_max_len() -> None:
    args = container(render(md_with()))["args"]
    assert flag(args, "--served-model-name") == BASE["spec"]["model"]
    assert "--max-model-len" not in args


def test_tgi_command_and_every_flag() -> None:
    md = md_with(engine="tgi", quantization="gptq", maxModelLen=8192)
    c = container(render(md, count=4))
    assert c["command"] == ["text-generation-launcher"]
    args = c["args"]
    assert flag(args, "--model-id") == BASE["spec"]["model"]
    assert flag(args, "--num-shard") == "4"
    assert flag(args, "--quantize") == "gptq"
    assert flag(args, "--max-total-tokens") == "8192"
    assert flag(args, "--max-input-tokens") == "8191"
    assert flag(args, "--hostname") == "0.0.0.0"
    assert flag(args, "--port") == "80"
    assert "--quantization" not in args and "--tensor-parallel-size" not in args
    assert c["ports"][0]["containerPort"] == 80
    assert c["image"] == DEFAULT_ENGINE_IMAGES["tgi"]


# vLLM 0.32 has neither bitsandbytes nor gguf (its QUANTIZATION_METHODS); TGI no gguf.
VLLM_EXPECTED = {
    "none": None,
    "awq": "awq",
    "gptq": "gptq",
    "fp8": "fp8",
    "compressed-tensors": "compressed-tensors",
}
TGI_EXPECTED = VLLM_EXPECTED | {"bitsandbytes": "bitsandbytes"}
# What each engine's refusal tells the user to do instead.
REFUSAL_HINTS = {
    ("vllm", "gguf"): "vllm-gguf-plugin",
    ("vllm", "bitsandbytes"): "use engine tgi",
    ("tgi", "gguf"): "TGI cannot load GGUF",
    ("sglang", "gguf"): "engine llamacpp",
    **{
        ("llamacpp", q): "llama.cpp loads GGUF files only"
        for q in ("awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors")
    },
}


def test_expectation_tables_cover_every_api_value() -> None:
    assert set(VLLM_EXPECTED) | {"bitsandbytes", "gguf"} == set(QUANTIZATIONS)
    assert set(TGI_EXPECTED) | {"gguf"} == set(QUANTIZATIONS)


def test_engines_take_exactly_the_expected_values() -> None:
    assert dict(ENGINES["vllm"].quantizations) == VLLM_EXPECTED
    assert dict(ENGINES["tgi"].quantizations) == TGI_EXPECTED


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_refused_api_value_has_a_hint_and_only_those(engine: str) -> None:
    refused = set(QUANTIZATIONS) - set(ENGINES[engine].quantizations)
    assert set(ENGINES[engine].quantization_hints) == refused
    assert refused == {q for e, q in REFUSAL_HINTS if e == engine}


def assert_refused(md: Any, engine: str, quantization: str) -> None:
    with pytest.raises(SpecError) as err:
        render(md)
    assert err.value.field == "spec.quantization"
    assert err.value.reason == "UnsupportedQuantization"
    assert err.value.message.startswith(
        f"quantization {quantization!r} cannot run on engine {engine!r} (supported: "
    )
    assert REFUSAL_HINTS[(engine, quantization)] in err.value.message


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_vllm_quantization_mapping(quantization: str) -> None:
    md = md_with(quantization=quantization)
    if quantization not in VLLM_EXPECTED:
        assert_refused(md, "vllm", quantization)
        return
    args = container(render(md))["args"]
    assert flag(args, "--quantization") == VLLM_EXPECTED[quantization]


@pytest.mark.parametrize("quantization", QUANTIZATIONS)
def test_tgi_quantization_mapping(quantization: str) -> None:
    md = md_with(engine="tgi", quantization=quantization)
    if quantization not in TGI_EXPECTED:
        assert_refused(md, "tgi", quantization)
        return
    args = container(render(md))["args"]
    assert flag(args, "--quantize") == TGI_EXPECTED[quantization]
    assert "--dtype" not in args  # TGI refuses --dtype together with --quantize


def test_vllm_gguf_refusal_says_why_and_what_to_do() -> None:
    with pytest.raises(SpecError) as err:
        render(md_with(quantization="gguf"))
    assert err.value.message == (
        "quantization 'gguf' cannot run on engine 'vllm' "
        "(supported: awq, compressed-tensors, fp8, gptq, none). "
        "vLLM 0.32 has no built-in GGUF loader (it moved to the vllm-gguf-plugin package): "
        "use a checkpoint in safetensors, or an image with that plugin via spec.image with "
        "quantization none and `--quantization gguf` in spec.args."
    )


def test_vllm_bitsandbytes_refusal_points_to_tgi() -> None:
    with pytest.raises(SpecError) as err:
        render(md_with(quantization="bitsandbytes"))
    assert err.value.message.endswith(
        "(supported: awq, compressed-tensors, fp8, gptq, none). "
        "vLLM 0.32 dropped bitsandbytes: use engine tgi, or an AWQ/GPTQ/fp8 checkpoint."
    )


def test_a_refusal_without_a_hint_ends_at_the_supported_list() -> None:
    bare = replace(VLLM(), quantization_hints={})
    spec = md_with(quantization="gguf").spec
    with pytest.raises(SpecError) as err:
        quantization_flag(bare, spec)
    assert err.value.message.endswith("(supported: awq, compressed-tensors, fp8, gptq, none)")


def test_gguf_through_a_plugin_image_is_passed_as_written() -> None:
    # The workaround the vLLM refusal names: the operator passes no flag of its own.
    md = md_with(
        model="pvc://models/llama/Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf",
        quantization="none",
        image="registry.example/vllm-gguf:0.32",
        args=["--quantization", "gguf"],
    )
    c = container(render(md))
    assert c["image"] == "registry.example/vllm-gguf:0.32"
    assert flag(c["args"], "--quantization") == "gguf"


def test_user_args_and_env_are_appended_after_generated_ones() -> None:
    md = md_with(
        args=["--enable-lora", "--max-num-seqs", "64"],
        env=[{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
        hfTokenSecretRef={"name": "hf", "key": "tok"},
    )
    c = container(render(md))
    assert c["args"][-3:] == ["--enable-lora", "--max-num-seqs", "64"]
    assert c["args"][0] == BASE["spec"]["model"]  # user args never displace the positional
    names = [e["name"] for e in c["env"]]
    telemetry = ["VLLM_NO_USAGE_STATS", "DO_NOT_TRACK", "HF_HUB_DISABLE_TELEMETRY"]
    assert names == ["HF_HOME", "HF_TOKEN", "VLLM_LOGGING_LEVEL", *telemetry]
    token = c["env"][1]
    assert token == {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "tok"}},
    }


def test_placement_affinity_toleration_and_gpu_limit() -> None:
    pod = render(md_with(gpu={"type": "nvidia-a100-80gb", "count": 4}), count=4).deployment["spec"][
        "template"
    ]["spec"]
    term = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    assert term["key"] == "nvidia.com/gpu.product"
    assert term["operator"] == "In"
    assert term["values"] == ["NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-SXM4-80GB"]
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists"}]
    assert pod["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "4"}}


def test_shm_probes_and_startup_budget() -> None:
    config = parse_config({"startupBudgetSeconds": 2400})
    pod = render(md_with(), config=config).deployment["spec"]["template"]["spec"]
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    c = pod["containers"][0]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/health", "port": "http"}
    budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
    assert budget >= 2400


@pytest.mark.parametrize("engine", ["vllm", "tgi"])
def test_engine_pod_quotes_its_crash_and_holds_no_api_token(engine: str) -> None:
    pod = render(md_with(engine=engine, quantization="none")).deployment["spec"]["template"]
    # The log tail reaches lastState.terminated.message, which status quotes.
    assert pod["spec"]["containers"][0]["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["spec"]["automountServiceAccountToken"] is False


def test_cache_pvc_is_mounted_at_engine_hf_home() -> None:
    for engine, home in (("vllm", "/root/.cache/huggingface"), ("tgi", "/data")):
        children = render(md_with(engine=engine, quantization="none", cache={"size": "200Gi"}))
        assert children.pvc is not None
        # ReadWriteMany by default (the platform config's cache.accessMode).
        assert children.pvc["metadata"]["name"] == "m-cache-rwx"
        assert children.pvc["spec"]["accessModes"] == ["ReadWriteMany"]
        assert children.pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
        c = container(children)
        assert {"name": "hf-cache", "mountPath": home} in c["volumeMounts"]
        assert {"name": "HF_HOME", "value": home} in c["env"]
    assert render(md_with()).pvc is None


def test_pvc_model_uri_is_mounted_read_only() -> None:
    c = container(render(md_with(model="pvc://weights/llama/70b", quantization="none")))
    assert c["args"][0] == "/models/weights/llama/70b"
    assert {"name": "model-weights", "mountPath": "/models/weights", "readOnly": True} in c[
        "volumeMounts"
    ]


def test_service_and_labels_and_owner() -> None:
    children = render(md_with())
    svc = children.service
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}
    ]
    # The serving pods: a Deployment's, or a group's leaders (never its workers).
    assert svc["spec"]["selector"] == {
        "openmodel.dev/model-deployment": "m",
        "app.kubernetes.io/name": "openmodel-engine",
    }
    for obj in children.all():
        meta = obj["metadata"]
        assert meta["labels"]["openmodel.dev/model-deployment"] == "m"
        assert "app.kubernetes.io/instance" not in meta["labels"]
        assert meta["ownerReferences"][0]["uid"] == "u-1"
        assert meta["ownerReferences"][0]["controller"] is True


def test_parent_gitops_labels_are_not_copied() -> None:
    body = copy.deepcopy(BASE)
    body["metadata"]["labels"] = {"app.kubernetes.io/instance": "argo-app"}
    body["metadata"]["annotations"] = {"argocd.argoproj.io/tracking-id": "x"}
    children = render(parse_model_deployment(body))
    text = yaml.safe_dump([o for o in children.all()])
    assert "argo-app" not in text and "tracking-id" not in text


def test_image_override_order() -> None:
    config = parse_config({"engineImages": {"vllm": "registry.local/vllm:pinned"}})
    assert container(render(md_with(), config=config))["image"] == "registry.local/vllm:pinned"
    assert container(render(md_with(image="my/vllm:dev"), config=config))["image"] == "my/vllm:dev"


def test_unknown_accelerator_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as err:
        render(md_with(gpu={"type": "nvidia-h9000", "count": 1}))
    assert err.value.reason == "UnknownAccelerator"
    assert "nvidia-h100-80gb" in err.value.message


def test_platform_accelerator_amd() -> None:
    config = parse_config(
        {
            "accelerators": {
                "amd-mi300x": {
                    "memoryGiB": 192,
                    "nodeLabel": "amd.com/gpu.product-name",
                    "nodeLabelValues": ["AMD_Instinct_MI300X_OAM"],
                    "resourceName": "amd.com/gpu",
                }
            }
        }
    )
    pod = render(md_with(gpu={"type": "amd-mi300x", "count": 8}), count=8, config=config)
    spec = pod.deployment["spec"]["template"]["spec"]
    assert spec["containers"][0]["resources"]["limits"] == {"amd.com/gpu": "8"}
    assert spec["tolerations"] == [{"key": "amd.com/gpu", "operator": "Exists"}]
    expr = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ][0]["matchExpressions"][0]
    assert expr["key"] == "amd.com/gpu.product-name"


def test_render_is_deterministic() -> None:
    a = render(md_with(env=[{"name": "B", "value": "1"}, {"name": "A", "value": "2"}]))
    b = render(md_with(env=[{"name": "B", "value": "1"}, {"name": "A", "value": "2"}]))
    assert yaml.safe_dump(a.all()) == yaml.safe_dump(b.all())


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_examples_parse_and_render(path: Path) -> None:
    md = parse_model_deployment(yaml.safe_load(path.read_text()))
    count = md.spec.gpu.count or 1
    children = render(md, count=count)
    assert children.deployment["metadata"]["name"] == md.name
