"""What the operator wants for one ModelDeployment: GPU count, replicas and children.

Pure: a function of the ModelDeployment, the platform config and the replicas the
Deployment has now (which the autoscaler owns when autoscaling is on).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from openmodel.api import (
    TASK_GENERATE,
    TASKS,
    ModelDeployment,
    ModelDeploymentSpec,
    SpecError,
    check_cache_access_mode,
    with_task,
)
from openmodel.config import PlatformConfig
from openmodel.engines import engine_for
from openmodel.engines.base import check_task, quantization_flag
from openmodel.model_resolver.state import ModelConfigState, Resolved
from openmodel.privacy.egress import EgressPlan
from openmodel.reconcile.render import (
    Children,
    plan_egress,
    render_children,
    resolve_accelerator,
)
from openmodel.reconcile.sizing_bridge import GpuChoice, choose_gpu_count
from openmodel.weights.render import access_mode, check_cache_size

SKIP_FIT_CHECK_ANNOTATION = "openmodel.dev/skip-fit-check"
ANNOTATION_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class Plan:
    children: Children
    replicas: int
    gpu: GpuChoice
    egress: EgressPlan
    task: str = TASK_GENERATE  # status.task: what the engine was rendered to serve


def decided_task(
    spec: ModelDeploymentSpec, model_config: ModelConfigState | None, previous: Any = None
) -> str:
    """status.task: spec.task; else what the checkpoint's files say (the resolver read
    them); else, while they are being read (or could not be), the task decided before
    (`previous`, the stored status.task), so a pending read does not switch a running
    engine; else generate."""
    if spec.task is not None:
        return spec.task
    if isinstance(model_config, Resolved):
        return model_config.checkpoint.task or TASK_GENERATE
    if model_config is not None and isinstance(previous, str) and previous in TASKS:
        return previous
    return TASK_GENERATE


def desired_replicas(md: ModelDeployment, current: int | None) -> int:
    """Replicas to apply: the spec's, or (autoscaling) the current count kept in bounds.

    With autoscaling on, the autoscaler owns the number; applying the value it already
    set keeps both field managers in agreement instead of fighting over the field.
    """
    auto = md.spec.autoscaling
    if auto is None:
        return md.spec.replicas
    value = auto.min_replicas if current is None else current
    return max(auto.min_replicas, min(auto.max_replicas, value))


def skip_fit_check(annotations: Mapping[str, Any] | None) -> bool:
    """The `openmodel.dev/skip-fit-check` annotation: "true" or "false" (or absent).

    Any other value ("yes", "True", "1") is refused rather than read as false: the user
    meant something, and guessing either way could start pods that do not fit or refuse
    a count they vouched for. Refused like a spec error, so nothing running is changed.
    """
    value = (annotations or {}).get(SKIP_FIT_CHECK_ANNOTATION)
    if value is None:
        return False
    if value not in ANNOTATION_BOOLEANS:
        raise SpecError(
            f"metadata.annotations[{SKIP_FIT_CHECK_ANNOTATION}]",
            f'must be "true" or "false", got {value!r}',
            reason="InvalidAnnotation",
        )
    return ANNOTATION_BOOLEANS[value]


def make_plan(
    md: ModelDeployment,
    config: PlatformConfig,
    current_replicas: int | None,
    annotations: Mapping[str, Any] | None = None,
    model_config: ModelConfigState | None = None,
    private: bool = False,
    task: str | None = None,
) -> Plan:
    """Raises SpecError (with a CamelCase reason) for a spec that cannot be served.

    For a known model, a count above the accelerator's `maxPerNode` is refused by the
    tensor-parallel check (one replica is one pod on one node). For a model the sizing
    catalogue does not know, the scheduler judges the count and its Unschedulable
    reason is reported as is. `model_config` is where reading the model's own
    config.json stands (None: not read, the catalogue sizes it). `private`: the
    namespace is labelled openmodel.dev/data=private. `task`: status.task as the caller
    decided it (`decided_task`; None: decided here without a stored status). A task read
    from the checkpoint that the engine cannot serve is refused here (`UnsupportedTask`);
    one written in spec.task was refused by the parse already.
    """
    skip = skip_fit_check(annotations)
    if task is None:
        task = decided_task(md.spec, model_config)
    if md.spec.task is None:
        how = " (read from the checkpoint: set spec.task to override)"
        check_task(engine_for(md.spec.engine), task, "spec.task", how)
    # The engine is rendered and sized for the decided task.
    md = replace(md, spec=with_task(md.spec, task))
    accelerator = resolve_accelerator(md, config)
    # Before sizing: a format the engine cannot load is refused with what to do instead,
    # not with a memory estimate for weights that would never start.
    quantization_flag(engine_for(md.spec.engine), md.spec)
    gpu = choose_gpu_count(
        md.spec, accelerator, config, skip_fit_check=skip, model_config=model_config
    )
    if gpu.nodes > 1 and md.spec.cache is not None:
        # The sized layout: the platform's default mode may be one node's only.
        mode, field = access_mode(md, config)
        check_cache_access_mode(md.spec, mode, field, gpu.nodes)
    replicas = desired_replicas(md, current_replicas)
    if md.spec.max_model_len is None and gpu.max_model_len is not None:
        # Without it the engine takes the model's full context, which may not fit.
        md = replace(md, spec=replace(md.spec, max_model_len=gpu.max_model_len))
    # The weights download fetches the commit the resolver read config.json at.
    resolved = model_config if isinstance(model_config, Resolved) else None
    children = render_children(
        md,
        config,
        gpu.count,
        replicas,
        commit=None if resolved is None else resolved.sha,
        private=private,
        nodes=gpu.nodes,
    )
    if resolved is not None:
        checkpoint = resolved.checkpoint
        check_cache_size(
            md, children.cache, checkpoint.weight_bytes, checkpoint.weight_bytes_source
        )
    return Plan(
        children=children,
        replicas=replicas,
        gpu=gpu,
        egress=plan_egress(md, config, private, children.cache),
        task=task,
    )
