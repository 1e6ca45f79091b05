"""What every inference engine provides to the rest of the operator.

An engine is one module implementing `Engine`: how its pod runs (image, command, args,
port, probes), what the autoscaler and the gateway read from it (metric names, the body
by which it refuses requests while draining), which specs it can serve (quantizations,
model and adapter sources, GGUF files, CPU-only nodes, tasks: generation, embeddings,
reranking), how the sizing budgets its
memory (`MemoryKnobs`) and how its LoRA adapters are loaded and listed. Adding one
means that module, one line in `openmodel.engines.ENGINES` and its name in the API's
enum (api.py, the CRD).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from openmodel.api import TASKS, ModelDeploymentSpec, SpecError, served_name
from openmodel.sizing.memory import MemoryKnobs


@dataclass(frozen=True)
class ModelSource:
    """Where the engine loads weights from, as the container sees it."""

    # What the engine is told to load: a repo id, or a path inside the container.
    reference: str
    # A PVC holding the weights, mounted read-only at `mount_path`.
    pvc_claim: str | None = None
    mount_path: str | None = None
    # s3:// or gs:// URIs are streamed by the engine itself.
    object_store: bool = False


MODEL_MOUNT_ROOT = "/models"


def model_source(model: str) -> ModelSource:
    """Interpret `spec.model`: a Hugging Face repo id or a pvc://, s3://, gs:// URI."""
    if model.startswith("pvc://"):
        rest = model.removeprefix("pvc://")
        claim, _, path = rest.partition("/")
        if not claim:
            raise SpecError("spec.model", "pvc:// URI needs a claim name: pvc://<claim>/<path>")
        mount = f"{MODEL_MOUNT_ROOT}/{claim}"
        return ModelSource(
            reference=f"{mount}/{path}".rstrip("/"), pvc_claim=claim, mount_path=mount
        )
    if model.startswith(("s3://", "gs://")):
        return ModelSource(reference=model, object_store=True)
    if "://" in model:
        raise SpecError(
            "spec.model",
            f"unsupported URI scheme in {model!r}: use pvc://, s3://, gs:// or a repo id",
        )
    return ModelSource(reference=model)


def served_model_name(spec: ModelDeploymentSpec) -> str:
    """The name clients put in `model`: the stated one, else the repo id or path tail."""
    return served_name(spec.model, spec.served_model_name)


def _pvc_parts(source: str) -> tuple[str, str]:
    claim, _, path = source.removeprefix("pvc://").partition("/")
    return claim, path


def adapter_path(source: str) -> str:
    """What the engine is told to load for an adapter: a repo id or s3://, gs:// URI as
    is; pvc://<claim>/<path> as the path under the claim's mount (model_source's layout)."""
    if source.startswith("pvc://"):
        claim, path = _pvc_parts(source)
        return f"{MODEL_MOUNT_ROOT}/{claim}/{path}".rstrip("/")
    return source


def adapter_claims(spec: ModelDeploymentSpec) -> list[str]:
    """The PVCs adapters load from that the model does not mount already, sorted."""
    model_claim = model_source(spec.model).pvc_claim
    claims = {_pvc_parts(a.source)[0] for a in spec.adapters if a.source.startswith("pvc://")}
    return sorted(claims - {model_claim})


@dataclass(frozen=True, slots=True)
class MetricNames:
    """The series one engine exports on its metrics path: the queue gauge (the
    autoscaler's signal, read by the gateway too), and, for information, the requests
    being served and the cumulative token counters the metering reads (a counter's
    `_total` sample, or a histogram's `_sum` where the engine counts tokens so)."""

    queue: str
    running: str | None = None
    prompt_tokens: str | None = None
    generation_tokens: str | None = None


@dataclass(frozen=True)
class AdapterApi:
    """An engine's HTTP API for loading LoRA adapters while it runs: the adapter loop
    lists, loads and unloads through it, so the pod template never changes."""

    # GET: the served models, each adapter among them with its `parent`.
    list_path: str
    # POST {name_field: name, path_field: path}; answers plain text on success.
    load_path: str
    # POST {name_field: name}; 404 when the adapter is not loaded.
    unload_path: str
    name_field: str
    path_field: str


@dataclass(frozen=True)
class AdapterSupport:
    """How an engine serves named LoRA adapters (spec.adapters, spec.lora)."""

    # Whether an adapter's source may be an s3:// or gs:// URI.
    object_store_sources: bool
    # Loaded at runtime through this API; None: loaded at start only, so a change rolls
    # the pods and `Engine.started_adapters` says what a pod serves.
    runtime_api: AdapterApi | None = None


@dataclass(frozen=True)
class WeightFiles:
    """The files of a Hugging Face snapshot an engine loads: what the weights download
    Job fetches (glob patterns, as `huggingface_hub` matches them; `*` crosses `/`).
    The downloader adds one rule of its own: `*.bin`/`*.pt`/`*.pth` only when the
    revision has no `*.safetensors` (a repo often ships both)."""

    allow: tuple[str, ...]
    ignore: tuple[str, ...] = ()


# A transformers-style checkpoint: config and generation config, tokenizer files, the
# weights and their index, a chat template, and the code of a `trust_remote_code` model.
# Meta's repos add the original consolidated checkpoint under original/: never loaded.
SNAPSHOT_FILES = WeightFiles(
    allow=(
        "*.json", "*.safetensors", "*.bin", "*.pt", "*.pth", "*.model", "*.tiktoken",
        "*.txt", "*.py", "*.jinja",
    ),
    ignore=("original/*",),
)  # fmt: skip


@dataclass(frozen=True)
class NodeGroup:
    """One pod's place in a replica that spans `nodes` pods, each on its own node
    (tensor parallel within a pod, pipeline parallel across pods). `rank` and
    `leader_address` are what the engine's flags get: literal values, or `$(VAR)`
    references the kubelet expands from the pod's environment (the group controller
    sets them per pod)."""

    nodes: int
    leader: bool  # rank 0: the pod that serves HTTP; the others run model shards only
    rank: str
    leader_address: str


class Engine(Protocol):
    @property
    def name(self) -> str:
        """The spec.engine value."""

    @property
    def display_name(self) -> str:
        """The engine's name in messages to people."""

    @property
    def image(self) -> str:
        """The default image (the platform config's `engineImages.<name>` overrides it)."""

    @property
    def cpu_image(self) -> str | None:
        """The default image for gpu.type cpu (`engineImages.<name>-cpu`), when it is
        another build; None: `image` serves there too."""

    @property
    def runs_on_cpu(self) -> bool:
        """Whether the engine serves on CPU-only nodes (gpu.type cpu)."""

    @property
    def port(self) -> int: ...
    @property
    def health_path(self) -> str: ...
    @property
    def metrics_path(self) -> str: ...
    @property
    def metric_names(self) -> MetricNames:
        """The gauges on `metrics_path`: the queue is the autoscaler's signal and the
        gateway's balancing weight."""

    @property
    def draining_refusal(self) -> bytes | None:
        """Bytes in a small 5xx body by which the engine says it is draining and never
        ran the request, so the gateway may send it to another pod; None: no such answer."""

    @property
    def hf_home(self) -> str:
        """Where the engine keeps its Hugging Face cache (HF_HOME)."""

    @property
    def telemetry_opt_out(self) -> Mapping[str, str]:
        """Environment that turns off what the engine and the libraries it uses report
        home (usage statistics), by their documented switches; empty: nothing to switch."""

    @property
    def offline_env(self) -> Mapping[str, str]:
        """Environment that keeps the engine from fetching anything (weights, tokenizer,
        configs) when the model is already local; empty: it fetches nothing by itself."""

    @property
    def weight_files(self) -> WeightFiles | None:
        """The snapshot files the weights download Job fetches into the cache before the
        engine starts offline; None: the engine fetches its own weights at start."""

    @property
    def shm_size(self) -> str: ...
    @property
    def quantizations(self) -> Mapping[str, str | None]:
        """spec.quantization value -> the engine's own flag value (absent = unsupported)."""

    @property
    def quantization_hints(self) -> Mapping[str, str]:
        """Unsupported spec.quantization value -> one sentence saying what to do instead,
        appended to the refusal."""

    @property
    def streams_from_object_store(self) -> bool:
        """Whether spec.model may be an s3:// or gs:// URI the engine streams itself."""

    @property
    def gguf_file_flag(self) -> str | None:
        """The flag given spec.ggufFile, the GGUF file in a Hugging Face repo, for an
        engine that loads one GGUF file (needed unless spec.model is a pvc:// path);
        None: spec.ggufFile is refused."""

    @property
    def adapters(self) -> AdapterSupport | None:
        """How it serves LoRA adapters; None: it serves no named adapters."""

    @property
    def memory(self) -> MemoryKnobs:
        """How it budgets GPU memory, for the sizing."""

    @property
    def suggested(self) -> bool:
        """Whether refusals suggest this engine instead of one that cannot serve a spec."""

    @property
    def tasks(self) -> frozenset[str]:
        """The spec.task values it serves (`api.TASKS`): generate, and the pooling tasks
        (embed, rerank) it renders with its own switches."""

    @property
    def task_hint(self) -> str | None:
        """For an engine that serves no pooling task: one sentence saying where such
        models are served instead, appended to the refusal; None: nothing to add."""

    @property
    def spans_nodes(self) -> bool:
        """Whether one replica can run as several pods on several nodes (the engine's own
        multi-node launch, `args` with a `NodeGroup`)."""

    def command(self) -> list[str]: ...

    def args(
        self, spec: ModelDeploymentSpec, gpu_count: int, group: NodeGroup | None = None
    ) -> list[str]:
        """The container's args for `gpu_count` GPUs in the pod; with `group`, for that
        pod of a replica spanning nodes (only engines that `spans_nodes`)."""

    def env(self, spec: ModelDeploymentSpec) -> list[dict[str, str]]:
        """Engine-specific environment (before the user's spec.env, which can override)."""

    def started_adapters(self, pod: Mapping[str, Any]) -> frozenset[str]:
        """The adapter names a pod of this engine was started with (engines that load
        adapters at start only; empty for the others)."""


def quantization_value(engine: Engine, quantization: str) -> str | None:
    """The engine's flag value for a spec.quantization value, or SpecError naming both
    (and, where the engine has one, what to do instead)."""
    if quantization not in engine.quantizations:
        supported = ", ".join(sorted(engine.quantizations))
        message = (
            f"quantization {quantization!r} cannot run on engine {engine.name!r} "
            f"(supported: {supported})"
        )
        hint = engine.quantization_hints.get(quantization)
        raise SpecError(
            "spec.quantization",
            message if hint is None else f"{message}. {hint}.",
            reason="UnsupportedQuantization",
        )
    return engine.quantizations[quantization]


def check_task(engine: Engine, task: str, field: str, how: str = "") -> None:
    """SpecError `UnsupportedTask` naming `field` when `engine` cannot serve `task`;
    `how` says where the task came from, for a task the operator read itself."""
    if task in engine.tasks:
        return
    served = ", ".join(t for t in TASKS if t in engine.tasks)
    hint = f" {engine.task_hint}." if engine.task_hint else ""
    raise SpecError(
        field,
        f"task {task!r}{how} cannot run on engine {engine.name!r} (it serves: {served}).{hint}",
        reason="UnsupportedTask",
    )


def quantization_flag(engine: Engine, spec: ModelDeploymentSpec) -> str | None:
    """`quantization_value` of spec.quantization."""
    return quantization_value(engine, spec.quantization)
