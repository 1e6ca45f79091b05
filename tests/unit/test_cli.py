"""The openmodel CLI: render, validate, size, and clear errors for bad files."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from openmodel.cli import main

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = main(argv, out=out)
    return code, out.getvalue()


def test_render_prints_deployment_service_and_pvc() -> None:
    code, text = run(["render", "-f", str(EXAMPLES / "qwen7b-l4.yaml")])
    assert code == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(text)]
    assert kinds == [
        "NetworkPolicy",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "Job",
        "Deployment",
        "Service",
    ]


def test_render_fills_max_model_len_from_sizing(tmp_path: Path) -> None:
    body = yaml.safe_load((EXAMPLES / "llama70b-awq.yaml").read_text())
    del body["spec"]["maxModelLen"]
    del body["spec"]["gpu"]["count"]
    f = tmp_path / "md.yaml"
    f.write_text(yaml.safe_dump(body))
    code, text = run(["render", "-f", str(f)])
    assert code == 0
    dep = next(d for d in yaml.safe_load_all(text) if d["kind"] == "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--max-model-len" in args
    assert args[args.index("--tensor-parallel-size") + 1] == "1"  # AWQ 70B fits one H100


def test_validate_reports_each_document(tmp_path: Path) -> None:
    good = yaml.safe_load((EXAMPLES / "llama70b-awq.yaml").read_text())
    bad = yaml.safe_load((EXAMPLES / "llama70b-awq.yaml").read_text())
    bad["spec"]["gpu"] = {"type": "nvidia-h100-80gb", "count": 3}
    f = tmp_path / "two.yaml"
    f.write_text(yaml.safe_dump_all([good, bad]))
    code, text = run(["validate", "-f", str(f)])
    assert code == 1
    lines = text.splitlines()
    assert "document 1: llama70b-awq: valid (2 GPU(s) per replica; fits: " in lines[0]
    assert "document 2: spec.gpu.count" in lines[1]
    assert "InvalidTensorParallelSize" in lines[1]


def test_size_lists_counts(capsys: pytest.CaptureFixture[str]) -> None:
    code, text = run(["size", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "nvidia-h100-80gb"])
    assert code == 0
    assert "Llama 3.1 70B" in text


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("a: [unclosed", "not valid YAML"),
        ("", "no YAML documents"),
        ("- 1\n- 2\n", "expected a mapping"),
    ],
)
def test_bad_files_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, words: str
) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    code, _ = run(["validate", "-f", str(f)])
    assert code == 2
    assert words in capsys.readouterr().err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run(["render", "-f", "/nonexistent/md.yaml"])
    assert code == 2
    assert "cannot read" in capsys.readouterr().err


def test_wrong_kind_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "pod.yaml"
    f.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: x}\n")
    code, _ = run(["render", "-f", str(f)])
    assert code == 1
    assert "expected apiVersion openmodel.dev/v1alpha1" in capsys.readouterr().err


def md_file(tmp_path: Path, **spec: object) -> Path:
    body = yaml.safe_load((EXAMPLES / "llama70b-awq.yaml").read_text())
    body["spec"].update(spec)
    f = tmp_path / "md.yaml"
    f.write_text(yaml.safe_dump(body))
    return f


@pytest.mark.parametrize(
    ("quantization", "hint"),
    [("gguf", "vllm-gguf-plugin"), ("bitsandbytes", "use engine tgi")],
)
def test_validate_refuses_what_vllm_cannot_load_before_sizing(
    tmp_path: Path, quantization: str, hint: str
) -> None:
    # 70B does not fit one T4 in any format: the quantization refusal still comes first,
    # since it is what must change.
    f = md_file(
        tmp_path,
        model="meta-llama/Llama-3.1-70B-Instruct",
        quantization=quantization,
        gpu={"type": "nvidia-t4", "count": 1},
    )
    code, text = run(["validate", "-f", str(f)])
    assert code == 1
    assert f"spec.quantization: quantization {quantization!r} cannot run on engine 'vllm'" in text
    assert hint in text
    assert text.rstrip().endswith("(UnsupportedQuantization)")
    assert "InsufficientGPUMemory" not in text


def test_validate_takes_bitsandbytes_on_tgi(tmp_path: Path) -> None:
    f = md_file(
        tmp_path,
        model="meta-llama/Llama-3.1-8B-Instruct",
        engine="tgi",
        quantization="bitsandbytes",
        gpu={"type": "nvidia-l4", "count": 1},
        maxModelLen=8192,
    )
    code, text = run(["validate", "-f", str(f)])
    assert (code, "valid (1 GPU(s) per replica; fits: " in text) == (0, True), text


@pytest.mark.parametrize(
    ("engine", "quantization", "code"),
    [
        ("vllm", "gguf", 1),
        ("vllm", "bitsandbytes", 1),
        ("tgi", "gguf", 1),
        ("tgi", "bitsandbytes", 0),
        ("vllm", "fp8", 0),
    ],
)
def test_size_refuses_what_the_engine_cannot_load(
    capsys: pytest.CaptureFixture[str], engine: str, quantization: str, code: int
) -> None:
    argv = ["size", "meta-llama/Llama-3.1-8B-Instruct", "--gpu", "nvidia-l4"]
    got, text = run([*argv, "--engine", engine, "--quantization", quantization])
    err = capsys.readouterr().err
    assert got == code, err
    if code:
        assert text == ""
        assert "(UnsupportedQuantization)" in err
    else:
        assert "Smallest count that fits" in text


def write_md(tmp_path: Path, model: str, quantization: str, gpu: dict[str, object]) -> str:
    body = {
        "apiVersion": "openmodel.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {"model": model, "quantization": quantization, "gpu": gpu},
    }
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(body))
    return str(path)


def test_validate_never_prints_a_bare_valid(tmp_path: Path) -> None:
    # DeepSeek-V3 in fp8 does not fit one node of 8 x H100 80GB (issue 14: it used to
    # print "valid"); with gpu.nodes 1 that is refused, with what would fit.
    path = write_md(
        tmp_path,
        "deepseek-ai/DeepSeek-V3",
        "fp8",
        {"type": "nvidia-h100-80gb", "count": 8, "nodes": 1},
    )
    out = io.StringIO()
    assert main(["validate", "-f", path], out=out) == 1
    assert "(InsufficientGPUMemory)" in out.getvalue() and "nvidia-h200" in out.getvalue()
    assert "gpu.nodes 2 with gpu.count 8" in out.getvalue()
    # gpu.nodes omitted: the replica spans the fewest nodes that hold it.
    path = write_md(
        tmp_path, "deepseek-ai/DeepSeek-V3", "fp8", {"type": "nvidia-h100-80gb", "count": 8}
    )
    out = io.StringIO()
    assert main(["validate", "-f", path], out=out) == 0
    assert "valid (2 pods x 8 GPU(s) per replica, each pod on its own node; fits: " in (
        out.getvalue()
    )
    # A model nothing knows: valid as far as the operator can judge, and it says so.
    path = write_md(tmp_path, "acme/house-model", "none", {"type": "nvidia-h100-80gb", "count": 2})
    out = io.StringIO()
    assert main(["validate", "-f", path], out=out) == 0
    assert "NOT sized" in out.getvalue() and "memory was not checked" in out.getvalue()


def test_size_shows_the_layout_across_nodes_when_no_node_holds_the_model() -> None:
    argv = ["size", "deepseek-ai/DeepSeek-V3", "--gpu", "nvidia-h100-80gb", "--offline"]
    code, text = run([*argv, "--quantization", "fp8"])
    assert code == 0
    assert "No valid count fits on one node." in text
    assert "Across nodes" in text
    assert "Smallest layout that fits: gpu.nodes 2 x gpu.count 8 (16 GPUs per replica)" in text
    # An engine that runs a replica in one pod: no layout across nodes is offered.
    code, text = run([*argv, "--quantization", "fp8", "--engine", "tgi"])
    assert code == 0 and "Across nodes" not in text


def test_render_spans_nodes_as_a_leader_worker_set(tmp_path: Path) -> None:
    path = write_md(tmp_path, "deepseek-ai/DeepSeek-V3", "fp8", {"type": "nvidia-h100-80gb"})
    code, text = run(["render", "-f", path])
    assert code == 0
    kinds = [d["kind"] for d in yaml.safe_load_all(text)]
    assert "LeaderWorkerSet" in kinds and "Deployment" not in kinds


def test_size_reads_a_local_config_json() -> None:
    data = Path(__file__).parent / "data" / "hf-configs" / "Qwen--Qwen2.5-72B-Instruct-AWQ.json"
    out = io.StringIO()
    assert main(["size", str(data), "--gpu", "nvidia-h100-80gb"], out=out) == 0
    text = out.getvalue()
    assert "(local config.json)" in text and "awq 4-bit (from checkpoint config.json)" in text
    assert "Smallest count that fits: 1" in text
