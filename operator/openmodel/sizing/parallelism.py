"""Tensor-parallel rules: which GPU counts can shard a model.

The rules of tensor-parallel sharding (docs/engines.md), the same for every GPU engine
since they shard the same tensors the same way:
- attention heads % tp == 0;
- KV heads % tp == 0 when kv_heads >= tp, else tp % kv_heads == 0 (heads replicated);
- group-wise quantized weights (AWQ, GPTQ, compressed-tensors 4-bit): the row-parallel
  down projection's input, intermediate_size / tp, must be a whole number of groups.
The count is the GPUs of one pod, on one node, so it is also capped by the accelerator's
`max_per_node`. A replica too large for one node spans several pods (`gpu.nodes`), one
pipeline-parallel stage each: every stage needs at least one layer.

A rule whose numbers are unknown (a spec.modelInfo without heads) is not checked: a
count the user asked for is then taken on trust, while automatic choice sticks to
powers of two, which every mainstream model's head count allows.
"""

from __future__ import annotations

from openmodel.sizing.catalogue import Architecture
from openmodel.sizing.formats import WeightFormat


def tp_violations(arch: Architecture, tp: int, fmt: WeightFormat) -> tuple[str, ...]:
    """Why `tp` ranks cannot shard this model (empty when they can)."""
    problems: list[str] = []
    heads = arch.attention_heads
    if heads is not None and heads % tp:
        problems.append(f"{heads} attention heads are not divisible by {tp}")
    kv = arch.kv_heads
    if kv is not None:
        if kv >= tp and kv % tp:
            problems.append(f"{kv} KV heads are not divisible by {tp}")
        elif kv < tp and tp % kv:
            problems.append(f"{tp} is not a multiple of the {kv} KV heads")
    size = arch.intermediate_size
    group = fmt.group_size
    if group is not None and size is not None and (size % tp or (size // tp) % group):
        problems.append(
            f"intermediate size {size} / {tp} = {size / tp:g} is not a multiple of "
            f"the {fmt.quantization} group size {group}"
        )
    return tuple(problems)


def valid_tp_sizes(arch: Architecture, fmt: WeightFormat, max_per_node: int) -> tuple[int, ...]:
    """Every GPU count from 1 to `max_per_node` that passes the known rules."""
    return tuple(n for n in range(1, max_per_node + 1) if not tp_violations(arch, n, fmt))


def candidate_counts(arch: Architecture, fmt: WeightFormat, max_per_node: int) -> tuple[int, ...]:
    """The counts automatic sizing tries, smallest first.

    With the head count unknown, only powers of two: trying 3 because nothing rules it
    out would pick a count the engine is likely to refuse.
    """
    valid = valid_tp_sizes(arch, fmt, max_per_node)
    if arch.attention_heads is None:
        return tuple(n for n in valid if n & (n - 1) == 0)
    return valid


# The most pods (nodes) one replica may span: the CRD's maximum of spec.gpu.nodes.
MAX_NODES = 16


def pp_violations(arch: Architecture, nodes: int) -> tuple[str, ...]:
    """Why `nodes` pipeline stages cannot split this model (empty when they can)."""
    if arch.layers is not None and nodes > arch.layers:
        return (f"{nodes} pipeline stages need at least {nodes} layers; it has {arch.layers}",)
    return ()


def full_node_count(arch: Architecture, fmt: WeightFormat, max_per_node: int) -> int | None:
    """The GPUs per pod of a replica that spans nodes: the largest count automatic sizing
    would try on one node (every GPU of it: tensor parallel within the node, where the
    links are fast), None when no count can shard the model."""
    counts = candidate_counts(arch, fmt, max_per_node)
    return max(counts) if counts else None
