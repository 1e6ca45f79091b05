"""The fit check: the layout of a ModelDeployment's replica, chosen or checked, with reasons.

A replica is `gpu.nodes` pods (one per node) of `gpu.count` GPUs each: tensor parallel
within a pod, pipeline parallel across pods, so it holds count x nodes GPUs.
`resolve_gpu_count(spec, accelerator, catalog, max_nodes=...)` is what the operator and
the CLI call; `max_nodes` is 1 for an engine that runs a replica in one pod:
- gpu.count omitted, model known (catalogue or spec.modelInfo): the smallest valid
  tensor-parallel count that fits one node; when none does (and gpu.nodes is not 1),
  every GPU of a node (the largest valid count) on the fewest nodes that fit; none fits
  → SpecError `InsufficientGPUMemory`;
- gpu.count omitted, model unknown → SpecError `UnknownModelSize`;
- gpu.count given, model unknown → accepted as is (gpu.nodes or 1), no estimate;
- gpu.count given, model known: refused with `InvalidTensorParallelSize` when it
  cannot shard the model or exceeds a node, `InsufficientGPUMemory` when it does not
  fit on gpu.nodes nodes (when gpu.nodes is omitted: on one node, else on the fewest
  nodes that fit); the message carries the numbers and what would fit (another count,
  more nodes, GPU type, quantization or a shorter maxModelLen);
- gpu.nodes given: checked (`InvalidPipelineParallelSize` when the model has fewer
  layers than stages; refused for an engine that cannot span nodes).

Context: with spec.maxModelLen (or --max-model-len / --max-total-tokens in spec.args)
that is what must fit. Without it the check requires min(model max, 8192) tokens, and
`SizingResult.max_model_len` says what to start the engine with: the model's full
context when that fits at the chosen count, else that 8192 cap. The renderer must
pass it (the engine's context flag) when the spec does not, because left alone an
engine may use the full context and refuse to start when its KV cache cannot hold one
such sequence.

What differs between engines (their memory share, context and KV flags, LoRA slots,
GGUF-only loading) comes in as `MemoryKnobs`, from the engine module.

A pooling model (spec.task embed or rerank, as the reconciler decided it) is sized
without a sampler, and an encoder without a KV cache (memory.py); an encoder's engine
is left to choose its own context (its sentence-transformers `max_seq_length`, else the
model's positions) unless the spec sets one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from openmodel.accelerators import Accelerator, AcceleratorCatalog
from openmodel.api import POOLING_TASKS, ModelDeploymentSpec, SpecError, lora_settings, spec_task
from openmodel.sizing.catalogue import Architecture, ResolvedModel, resolve_model
from openmodel.sizing.checkpoint import Checkpoint, quantization_conflict
from openmodel.sizing.formats import (
    WeightFormat,
    conflicts,
    implied_quantization,
    weight_format,
    with_quantization,
)
from openmodel.sizing.memory import (
    DEFAULT_MAX_MODEL_LEN,
    EngineSettings,
    Estimate,
    MemoryKnobs,
    engine_settings,
    estimate_memory,
)
from openmodel.sizing.parallelism import (
    candidate_counts,
    full_node_count,
    pp_violations,
    tp_violations,
    valid_tp_sizes,
)

# A shorter maxModelLen is only worth suggesting if it leaves a usable context.
MIN_USEFUL_CONTEXT = 2048
MAX_GPU_TYPE_SUGGESTIONS = 3
# Built-in accelerators older than Ampere: the engines have no fp8 weight kernels for them, so
# "use fp8" would be bad advice. (The catalog does not record compute capability.)
NO_FP8_WEIGHTS = frozenset({"nvidia-t4"})


@dataclass(frozen=True)
class SizingResult:
    """The GPU count to run with, and the estimate behind it when the model is known."""

    gpu_count: int
    auto_sized: bool  # True when gpu.count was omitted and chosen here
    model: ResolvedModel | None  # None: not in the catalogue and no spec.modelInfo
    weight_format: WeightFormat
    estimate: Estimate | None
    # The engine's max_model_len: pass it when the spec does not set one (None: leave
    # the engine's default, because the KV cache could not be estimated).
    max_model_len: int | None
    notes: tuple[str, ...] = ()
    # Pods (one per node) per replica, and whether that number was chosen here.
    nodes: int = 1
    nodes_chosen: bool = False

    def summary(self) -> str:
        how = "chosen" if self.auto_sized else "as requested"
        head = f"{self.gpu_count} GPU(s) {how}"
        if self.nodes > 1:
            nodes_how = "chosen" if self.nodes_chosen else "as requested"
            head += (
                f" on each of {self.nodes} nodes ({nodes_how}; "
                f"{self.gpu_count * self.nodes} GPUs per replica)"
            )
        if self.estimate is None:
            head += "; model size unknown, memory not checked"
        else:
            head += f". {self.estimate.summary()}"
        return " ".join((head, *self.notes))

    def to_status(self) -> dict[str, Any] | None:
        """status.sizing content, or None when there is no estimate."""
        if self.estimate is None:
            return None
        out = self.estimate.to_status()
        if self.max_model_len is not None:
            out["maxModelLen"] = self.max_model_len
        return out


@dataclass(frozen=True)
class _Problem:
    """Everything an estimate depends on, bar the accelerator, count and format."""

    arch: Architecture
    settings: EngineSettings
    context: int  # tokens one sequence must be able to hold
    pooling: bool = False  # served for embed or rerank

    def estimate(
        self, fmt: WeightFormat, accelerator: Accelerator, count: int, nodes: int = 1
    ) -> Estimate:
        return estimate_memory(
            self.arch, fmt, accelerator, count, self.context, self.settings, nodes,
            self.pooling,
        )  # fmt: skip

    def smallest_fit(self, fmt: WeightFormat, accelerator: Accelerator) -> Estimate | None:
        for count in candidate_counts(self.arch, fmt, accelerator.max_per_node):
            est = self.estimate(fmt, accelerator, count)
            if est.fits:
                return est
        return None

    def node_counts(self, max_nodes: int) -> tuple[int, ...]:
        """The node counts above 1 a replica may span: at most `max_nodes`, one layer
        per pipeline stage at least."""
        return tuple(n for n in range(2, max_nodes + 1) if not pp_violations(self.arch, n))

    def fewest_nodes(
        self, fmt: WeightFormat, accelerator: Accelerator, count: int, max_nodes: int
    ) -> Estimate | None:
        """The smallest layout of `count` GPUs per node on 2..max_nodes nodes that fits."""
        for nodes in self.node_counts(max_nodes):
            est = self.estimate(fmt, accelerator, count, nodes)
            if est.fits:
                return est
        return None


def required_context(arch: Architecture, requested: int | None) -> int:
    """Tokens one sequence must fit: the requested maxModelLen, else min(model max, 8192)."""
    if requested is not None:
        return requested
    if arch.max_context_length is None:
        return DEFAULT_MAX_MODEL_LEN
    return min(arch.max_context_length, DEFAULT_MAX_MODEL_LEN)


def _engine_context(problem: _Problem, requested: int | None, est: Estimate) -> int | None:
    if requested is not None:
        return requested
    if not est.kv_known or problem.arch.encoder_only:
        return None
    full = problem.arch.max_context_length
    if full is not None and est.max_fitting_context is not None and est.max_fitting_context >= full:
        return full
    return problem.context


def _counts(values: Iterable[int]) -> str:
    return ", ".join(str(v) for v in values) or "none"


def _per_gpu(est: Estimate) -> str:
    return f"{est.total_gib:.1f} of {est.budget_gib:.1f} GiB per GPU"


def _nodes_text(est: Estimate) -> str:
    return f"gpu.nodes {est.nodes} with gpu.count {est.gpu_count} ({_per_gpu(est)})"


def _shortfall(model: str, est: Estimate) -> str:
    kv = (
        f"KV cache {est.kv_cache_gib:.1f} for {est.context_tokens} tokens"
        if est.kv_known
        else f"KV cache reserve {est.kv_cache_gib:.1f}"
    )
    lora = f" + LoRA {est.lora_gib:.2f}" if est.lora_gib > 0 else ""
    return (
        f"{model} ({est.model}, {est.quantization}) needs about {est.total_gib:.1f} GiB per GPU "
        f"on {est.layout} (weights {est.weights_gib:.1f} + {kv} + "
        f"overhead {est.overhead_gib:.1f}{lora}), more than the {est.budget_gib:.1f} GiB budget "
        f"({est.fraction_text} x {est.memory_gib:g} GiB)"
    )


def _suggestions(
    problem: _Problem,
    fmt: WeightFormat,
    accelerator: Accelerator,
    catalog: AcceleratorCatalog | None,
    given_count: int | None,
    spanning_nodes: int = 1,
) -> list[str]:
    """What would fit instead, most local change first. `spanning_nodes`: the most nodes
    a replica may span that the spec did not already try (1: none)."""
    out: list[str] = []
    counts = candidate_counts(problem.arch, fmt, accelerator.max_per_node)
    full = given_count or full_node_count(problem.arch, fmt, accelerator.max_per_node)
    if spanning_nodes > 1 and full is not None:
        across = problem.fewest_nodes(fmt, accelerator, full, spanning_nodes)
        if across is not None:
            out.append(_nodes_text(across))
    # Another count of the same GPU.
    if given_count is not None:
        fitting = [e for n in counts if (e := problem.estimate(fmt, accelerator, n)).fits]
        if fitting:
            out.append(
                "gpu.count " + " or ".join(f"{e.gpu_count} ({_per_gpu(e)})" for e in fitting[:2])
            )
    # A shorter context on the given count (or the smallest count that allows one).
    for n in (given_count,) if given_count is not None else counts:
        est = problem.estimate(fmt, accelerator, n)
        longest = est.max_fitting_context
        if (
            est.kv_known
            and longest is not None
            and MIN_USEFUL_CONTEXT <= longest < est.context_tokens
        ):
            where = "" if given_count is not None else f" with gpu.count {n}"
            out.append(f"spec.maxModelLen <= {longest}{where}")
            break
    # A smaller weight format on the same GPU.
    options: list[tuple[WeightFormat, str]] = []
    if fmt.bits > 8 and accelerator.name not in NO_FP8_WEIGHTS:
        options.append(
            (with_quantization("fp8"), "spec.quantization: fp8 (quantized at load time)")
        )
    if fmt.bits > 4:
        options.append((with_quantization("awq"), "a 4-bit AWQ/GPTQ checkpoint of the model"))
    for alt, label in options:
        fit = problem.smallest_fit(alt, accelerator)
        if fit is not None:
            out.append(f"{label} with gpu.count {fit.gpu_count} ({_per_gpu(fit)})")
    # Another GPU type from the catalog, least total memory first.
    if catalog is not None:
        others = [
            fit
            for name in catalog.names()
            if name != accelerator.name
            and (other := catalog.get(name)) is not None
            and (fit := problem.smallest_fit(fmt, other)) is not None
        ]
        others.sort(key=lambda e: (e.gpu_count * e.memory_gib, e.accelerator))
        out.extend(
            f"gpu.type {e.accelerator} with gpu.count {e.gpu_count} ({_per_gpu(e)})"
            for e in others[:MAX_GPU_TYPE_SUGGESTIONS]
        )
    return out


def _does_not_fit(
    field: str,
    head: str,
    problem: _Problem,
    fmt: WeightFormat,
    accelerator: Accelerator,
    catalog: AcceleratorCatalog | None,
    given_count: int | None,
    spanning_nodes: int = 1,
) -> SpecError:
    options = _suggestions(problem, fmt, accelerator, catalog, given_count, spanning_nodes)
    tail = (
        "Would fit: " + "; ".join(options) + "."
        if options
        else "Nothing tried fits (other counts, fp8/4-bit weights, other GPU types on one node)."
    )
    return SpecError(field, f"{head}. {tail}", "InsufficientGPUMemory")


def _notes(
    spec: ModelDeploymentSpec, model: ResolvedModel | None, fmt: WeightFormat, requested: int | None
) -> tuple[str, ...]:
    notes: list[str] = []
    implied = implied_quantization(spec.model)
    if model is not None and model.source == "config.json":
        notes.append(f"Sized from the checkpoint's config.json as {fmt.label}.")
    elif conflicts(spec.quantization, implied):
        notes.append(
            f"spec.quantization is {spec.quantization} but the repo name suggests {implied}; "
            f"sized as {spec.quantization}."
        )
    elif fmt.source == "repo name":
        notes.append(f"Sized as {fmt.label}, as the repo name suggests.")
    if model is None:
        return tuple(notes)
    arch = model.architecture
    limit = arch.max_context_length
    if requested is not None and limit is not None and requested > limit:
        notes.append(
            f"maxModelLen {requested} exceeds the model's {limit}-token context; the engine "
            "refuses that unless RoPE scaling is configured."
        )
    if not arch.kv_known:
        notes.append(
            "KV cache not computed (spec.modelInfo lacks layers, kvHeads or headDim); "
            "a share of the budget is reserved for it instead."
        )
    if model.source == "modelInfo" and fmt.bits < 16 and not fmt.quantizes_embeddings:
        notes.append("Embedding size unknown: 16-bit embeddings are counted at the quantized rate.")
    return tuple(notes)


def model_and_format(
    spec: ModelDeploymentSpec, checkpoint: Checkpoint | None, memory: MemoryKnobs
) -> tuple[ResolvedModel | None, WeightFormat]:
    """What to size: spec.modelInfo, else the checkpoint's config.json, else the catalogue.

    The checkpoint's own config wins over the catalogue: it is the model that will be
    loaded (a fine-tune, a padded quantized layout, a changed vocabulary). Raises
    SpecError `QuantizationMismatch` when spec.quantization cannot load the checkpoint.
    """
    if spec.model_info is not None or checkpoint is None:
        resolved = resolve_model(spec.model, spec.model_info)
        fmt = weight_format(sized_quantization(spec, memory), weights_name(spec))
        arch = resolved.architecture if resolved is not None else None
        stored = arch.checkpoint_format if arch is not None else None
        if fmt.source == "default" and arch is not None and stored not in (None, "none"):
            # The catalogue knows the checkpoint ships quantized (gpt-oss mxfp4, DeepSeek
            # fp8) and the engine loads it so without a flag.
            rate = (arch.checkpoint_weight_bytes or 0) / (arch.parameters_billions * 1e9)
            bits = 4 if rate < 0.75 else 8
            fmt = WeightFormat(str(stored), bits, rate, False, None, "catalogue")
        return resolved, fmt
    conflict = quantization_conflict(spec.quantization, checkpoint)
    if conflict is not None:
        raise SpecError("spec.quantization", conflict, "QuantizationMismatch")
    model = ResolvedModel(checkpoint.architecture, "config.json")
    if spec.quantization == "none":
        return model, checkpoint.weight_format()
    return model, weight_format(sized_quantization(spec, memory), weights_name(spec))


def weights_name(spec: ModelDeploymentSpec) -> str:
    """The name the weight format is read from: spec.ggufFile (the file in the repo),
    else the model."""
    return spec.gguf_file or spec.model


def sized_quantization(spec: ModelDeploymentSpec, memory: MemoryKnobs) -> str:
    """spec.quantization, except for an engine that loads GGUF whatever it says."""
    return "gguf" if memory.weights_always_gguf else spec.quantization


def resolve_gpu_count(
    spec: ModelDeploymentSpec,
    accelerator: Accelerator,
    catalog: AcceleratorCatalog | None = None,
    checkpoint: Checkpoint | None = None,
    extra_notes: tuple[str, ...] = (),
    *,
    memory: MemoryKnobs,
    max_nodes: int = 1,
) -> SizingResult:
    """Choose or check spec.gpu.count and spec.gpu.nodes on `accelerator`, for the engine
    whose knobs are `memory` (`Engine.memory`) and which can span up to `max_nodes`
    nodes per replica (1: one pod per replica).

    `catalog`, when given, lets an InsufficientGPUMemory message suggest other GPU
    types. `checkpoint` is the model's own config.json when it could be read
    (`openmodel.model_resolver`); `extra_notes` say why it could not. Raises SpecError
    with reason UnknownModelSize, QuantizationMismatch, InvalidTensorParallelSize,
    InvalidPipelineParallelSize, InsufficientGPUMemory or InvalidEngineArgs.
    """
    settings = engine_settings(memory, spec.args, lora_settings(spec))
    requested = settings.max_model_len_arg or spec.max_model_len
    model, fmt = model_and_format(spec, checkpoint, memory)
    notes = extra_notes + _notes(spec, model, fmt, requested)
    count = spec.gpu.count
    nodes = spec.gpu.nodes
    if nodes is not None and nodes > max_nodes:
        raise SpecError(
            "spec.gpu.nodes",
            f"is {nodes}, but engine {spec.engine!r} runs each replica in one pod on one "
            "node: omit gpu.nodes (or set 1), or use an engine that spans nodes",
            "InvalidPipelineParallelSize",
        )

    if model is None:
        if count is None:
            why = " ".join(extra_notes) or "the model is not in the sizing catalogue."
            raise SpecError(
                "spec.gpu.count",
                f"is required for {spec.model}: {why} The GPU count cannot be computed. Set "
                "spec.gpu.count, or describe the model in spec.modelInfo (parametersBillions; "
                "layers, kvHeads and headDim for the KV cache; attentionHeads for the "
                "tensor-parallel check)",
                "UnknownModelSize",
            )
        return SizingResult(count, False, None, fmt, None, requested, notes, nodes=nodes or 1)

    arch = model.architecture
    pooling = spec_task(spec) in POOLING_TASKS
    problem = _Problem(arch, settings, required_context(arch, requested), pooling)
    if nodes is not None and nodes > 1:
        broken = pp_violations(arch, nodes)
        if broken:
            raise SpecError(
                "spec.gpu.nodes",
                f"{nodes} nodes cannot run {arch.name} with pipeline parallelism: {broken[0]}",
                "InvalidPipelineParallelSize",
            )
    # Nodes the sizing may choose: none beyond the spec's, when it states them.
    spanning = max_nodes if nodes is None else 1

    def result(est: Estimate, auto: bool) -> SizingResult:
        context = _engine_context(problem, requested, est)
        return SizingResult(
            est.gpu_count, auto, model, fmt, est, context, notes, est.nodes,
            nodes_chosen=nodes is None and est.nodes > 1,
        )  # fmt: skip

    if count is None:
        chosen = _choose_layout(spec, problem, fmt, accelerator, catalog, nodes, max_nodes)
        return result(chosen, True)

    valid = valid_tp_sizes(arch, fmt, accelerator.max_per_node)
    if count not in valid:
        if count > accelerator.max_per_node:
            why = (
                f"gpu.count is the GPUs of one pod, on one node, and a {accelerator.name} node "
                f"has at most {accelerator.max_per_node} GPUs (platform config maxPerNode); a "
                f"replica larger than a node is gpu.nodes pods of gpu.count GPUs each"
            )
        else:
            why = "; ".join(tp_violations(arch, count, fmt))
        fitting = [n for n in valid if problem.estimate(fmt, accelerator, n).fits]
        raise SpecError(
            "spec.gpu.count",
            f"{count} GPUs cannot run {arch.name} ({fmt.label}) with tensor parallelism: {why}. "
            f"Valid counts on {accelerator.name}: {_counts(valid)}; of these, fit in memory: "
            f"{_counts(fitting)}",
            "InvalidTensorParallelSize",
        )
    est = problem.estimate(fmt, accelerator, count, nodes or 1)
    if est.fits:
        return result(est, False)
    across = problem.fewest_nodes(fmt, accelerator, count, spanning) if spanning > 1 else None
    if across is not None:
        return result(across, False)
    field = "spec.gpu.nodes" if nodes is not None and nodes > 1 else "spec.gpu.count"
    if spanning > 1:
        est = problem.estimate(fmt, accelerator, count, problem.node_counts(spanning)[-1])
    raise _does_not_fit(
        field, _shortfall(spec.model, est), problem, fmt, accelerator, catalog, count,
        max_nodes if nodes is not None else 1,
    )  # fmt: skip


def _choose_layout(
    spec: ModelDeploymentSpec,
    problem: _Problem,
    fmt: WeightFormat,
    accelerator: Accelerator,
    catalog: AcceleratorCatalog | None,
    nodes: int | None,
    max_nodes: int,
) -> Estimate:
    """gpu.count omitted: the smallest count on one node (unless gpu.nodes says more),
    else every GPU of a node on the fewest nodes that fit."""
    arch = problem.arch
    spanning = max_nodes if nodes is None else 1
    tried = candidate_counts(arch, fmt, accelerator.max_per_node)
    if nodes is None or nodes == 1:
        for n in tried:
            est = problem.estimate(fmt, accelerator, n)
            if est.fits:
                return est
    full = full_node_count(arch, fmt, accelerator.max_per_node)
    if full is not None and nodes is not None and nodes > 1:
        # Stated nodes: the smallest count that fits on that many.
        for n in tried:
            est = problem.estimate(fmt, accelerator, n, nodes)
            if est.fits:
                return est
    elif full is not None and spanning > 1:
        across = problem.fewest_nodes(fmt, accelerator, full, spanning)
        if across is not None:
            return across
    largest = max(tried, default=1)
    widest = nodes or (problem.node_counts(spanning) or (1,))[-1]
    where = f"{largest}" if widest == 1 else f"{widest} x {largest}"
    span = "" if widest == 1 else f" on up to {widest} nodes"
    head = (
        f"no valid GPU count of {accelerator.name} fits (tried {_counts(tried)}{span}); at "
        f"{where}: " + _shortfall(spec.model, problem.estimate(fmt, accelerator, largest, widest))
    )
    # Suggest spanning nodes only when the spec ruled it out (gpu.nodes 1).
    suggest_nodes = max_nodes if nodes == 1 else 1
    raise _does_not_fit(
        "spec.gpu.nodes" if nodes is not None else "spec.gpu.type",
        head, problem, fmt, accelerator, catalog, None, suggest_nodes,
    )  # fmt: skip
