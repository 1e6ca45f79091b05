"""The CLI's sizing report: the estimate at every valid GPU count, and which fit.

report = size_report("meta-llama/Llama-3.1-70B-Instruct", "nvidia-h100-80gb", "none",
                     AcceleratorCatalog(), memory=engine_for(name).memory)
print(format_size_report(report))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from openmodel.accelerators import AcceleratorCatalog
from openmodel.api import POOLING_TASKS, TASK_GENERATE, ModelInfo, SpecError
from openmodel.sizing.catalogue import ResolvedModel, resolve_model
from openmodel.sizing.checkpoint import Checkpoint, quantization_conflict
from openmodel.sizing.fit import required_context
from openmodel.sizing.formats import WeightFormat, weight_format
from openmodel.sizing.memory import Estimate, MemoryKnobs, engine_settings, estimate_memory
from openmodel.sizing.parallelism import (
    full_node_count,
    pp_violations,
    tp_violations,
    valid_tp_sizes,
)


@dataclass(frozen=True)
class SizeReport:
    model: str
    resolved: ResolvedModel
    weight_format: WeightFormat
    accelerator: str
    context_tokens: int
    context_source: str  # "maxModelLen" or "default"
    rows: tuple[Estimate, ...]  # one per valid count, ascending
    invalid: tuple[tuple[int, str], ...]  # count, why it cannot shard the model
    # When no count fits one node: every GPU of a node on 2, 3, ... nodes, up to the
    # first layout that fits (empty when one node suffices or the engine cannot span).
    across_nodes: tuple[Estimate, ...] = ()
    # The task sized for (generate, embed, rerank) and where it came from.
    task: str = "generate"
    task_source: str = "default"

    @property
    def smallest_fit(self) -> int | None:
        return next((row.gpu_count for row in self.rows if row.fits), None)

    @property
    def smallest_layout(self) -> Estimate | None:
        """The smallest layout that fits: on one node, else across the fewest nodes."""
        rows = (*self.rows, *self.across_nodes)
        return next((row for row in rows if row.fits), None)


def size_report(
    model: str,
    accelerator_name: str,
    quantization: str,
    catalog: AcceleratorCatalog,
    *,
    memory: MemoryKnobs,
    max_model_len: int | None = None,
    model_info: ModelInfo | None = None,
    args: Sequence[str] = (),
    checkpoint: Checkpoint | None = None,
    max_nodes: int = 1,
    task: str | None = None,
) -> SizeReport:
    """Estimates for `model` at every valid count of `accelerator_name`, and when none
    fits one node, across up to `max_nodes` nodes; from `checkpoint` (its own
    config.json) when given, else the catalogue. `task`: as spec.task (None: the
    checkpoint's, else generate); embed and rerank are sized as pooling models.

    Raises SpecError `UnknownAccelerator`, `UnknownModelSize` or `QuantizationMismatch`.
    """
    accelerator = catalog.get(accelerator_name)
    if accelerator is None:
        raise SpecError(
            "spec.gpu.type",
            f"unknown accelerator {accelerator_name!r}; known: {', '.join(catalog.names())}",
            "UnknownAccelerator",
        )
    resolved = resolve_model(model, model_info)
    fmt = weight_format(quantization, model)
    if checkpoint is not None and model_info is None:
        conflict = quantization_conflict(quantization, checkpoint)
        if conflict is not None:
            raise SpecError("spec.quantization", conflict, "QuantizationMismatch")
        resolved = ResolvedModel(checkpoint.architecture, "config.json")
        if quantization == "none":
            fmt = checkpoint.weight_format()
    if resolved is None:
        raise SpecError(
            "spec.model",
            f"{model} is not in the sizing catalogue; state its size with spec.modelInfo",
            "UnknownModelSize",
        )
    arch = resolved.architecture
    settings = engine_settings(memory, args)
    requested = settings.max_model_len_arg or max_model_len
    context = required_context(arch, requested)
    task_source = "stated"
    if task is None and checkpoint is not None and checkpoint.task is not None:
        task, task_source = checkpoint.task, "checkpoint"
    if task is None:
        task, task_source = TASK_GENERATE, "default"
    pooling = task in POOLING_TASKS
    valid = valid_tp_sizes(arch, fmt, accelerator.max_per_node)
    invalid = tuple(
        (n, "; ".join(tp_violations(arch, n, fmt)))
        for n in range(1, accelerator.max_per_node + 1)
        if n not in valid
    )
    rows = tuple(
        estimate_memory(arch, fmt, accelerator, n, context, settings, 1, pooling) for n in valid
    )
    across: list[Estimate] = []
    full = full_node_count(arch, fmt, accelerator.max_per_node)
    if full is not None and not any(row.fits for row in rows):
        for nodes in range(2, max_nodes + 1):
            if pp_violations(arch, nodes):
                break
            across.append(
                estimate_memory(arch, fmt, accelerator, full, context, settings, nodes, pooling)
            )
            if across[-1].fits:
                break
    return SizeReport(
        model=model,
        resolved=resolved,
        weight_format=fmt,
        accelerator=accelerator.name,
        context_tokens=context,
        context_source="maxModelLen" if requested is not None else "default",
        rows=rows,
        invalid=invalid,
        across_nodes=tuple(across),
        task=task,
        task_source=task_source,
    )


def format_size_report(report: SizeReport) -> str:
    """A plain-text table, one line per valid GPU count."""
    arch = report.resolved.architecture
    fmt = report.weight_format
    lines = [
        f"Model:   {report.model} -> {arch.name} ({report.resolved.source}), "
        f"{arch.parameters_billions:.4g}B parameters",
        f"Weights: {fmt.label} (from {fmt.source})",
        f"Task:    {report.task} ({report.task_source})"
        + (
            "; an encoder: no KV cache"
            if arch.encoder_only
            else "; pooling: no sampler"
            if report.task in POOLING_TASKS
            else ""
        ),
        f"Context: {report.context_tokens} tokens ({report.context_source}; "
        f"model max {arch.max_context_length or 'unknown'})",
    ]
    if report.rows:
        first = report.rows[0]
        lines.append(
            f"GPU:     {report.accelerator}, {first.memory_gib:g} GiB, budget "
            f"{first.budget_gib:.1f} GiB ({first.fraction_text})"
        )
    lines.append("")
    lines.append("GPUs  weights  KV cache  overhead   total  budget  fits  max context")
    for row in report.rows:
        longest = "-" if row.max_fitting_context is None else str(row.max_fitting_context)
        kv = f"{row.kv_cache_gib:8.1f}" + ("" if row.kv_known else "*")
        lines.append(
            f"{row.gpu_count:4d}  {row.weights_gib:7.1f}  {kv:<8}  {row.overhead_gib:8.1f}  "
            f"{row.total_gib:6.1f}  {row.budget_gib:6.1f}  {'yes' if row.fits else 'no':>4}  "
            f"{longest:>11}"
        )
    lines.append("(GiB per GPU)")
    if any(not row.kv_known for row in report.rows):
        lines.append("* KV cache not computable: a reserve share of the budget is shown.")
    smallest = report.smallest_fit
    lines.append(
        f"Smallest count that fits: {smallest}"
        if smallest is not None
        else "No valid count fits on one node."
    )
    if report.across_nodes:
        lines.append("")
        lines.append(
            "Across nodes (gpu.nodes pods of gpu.count GPUs: tensor parallel within a node, "
            "pipeline parallel across):"
        )
        lines.append("nodes x GPUs  weights  KV cache  overhead   total  budget  fits")
        for row in report.across_nodes:
            lines.append(
                f"{row.nodes:5d} x {row.gpu_count:4d}  {row.weights_gib:7.1f}  "
                f"{row.kv_cache_gib:8.1f}  {row.overhead_gib:8.1f}  {row.total_gib:6.1f}  "
                f"{row.budget_gib:6.1f}  {'yes' if row.fits else 'no':>4}"
            )
        layout = report.smallest_layout
        lines.append(
            f"Smallest layout that fits: gpu.nodes {layout.nodes} x gpu.count {layout.gpu_count} "
            f"({layout.nodes * layout.gpu_count} GPUs per replica)"
            if layout is not None
            else f"No layout of up to {report.across_nodes[-1].nodes} nodes fits."
        )
    if report.invalid:
        lines.append("Not valid:")
        lines.extend(f"  {n}: {why}" for n, why in report.invalid)
    return "\n".join(lines)
