"""What an engine can serve, checked on every parsed spec: the operator's re-check of the
CRD's engine rules (CEL in crds/modeldeployment.yaml), answered from the engines' facts.

`openmodel.engines.parse_model_deployment` parses with these rules; it is the parse
every caller uses (the reconciler, the loops, the gateway, the CLI), so each gets the
same verdict. A refusal suggests the engines that can serve the spec instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from openmodel.api import CPU_ACCELERATOR, ModelDeploymentSpec, SpecError
from openmodel.engines.base import Engine, check_task

OBJECT_STORE_SCHEMES = ("s3://", "gs://")


class RegistryRules:
    """`api.EngineRules` answered by the engines of `registry`."""

    def __init__(self, registry: Mapping[str, Engine]) -> None:
        self.registry = registry

    def _suggested(self, can: Callable[[Engine], bool]) -> list[str]:
        """The engines to suggest instead: those that `can`, in registry order."""
        return [e.name for e in self.registry.values() if e.suggested and can(e)]

    def check_adapter_source(self, engine: str, source: str, field: str) -> None:
        adapters = self.registry[engine].adapters
        if adapters is not None and not adapters.object_store_sources:
            others = self._suggested(
                lambda e: e.adapters is not None and e.adapters.object_store_sources
            )
            raise SpecError(
                field,
                f"engine {engine!r} cannot load adapters from s3:// or gs://; use engine "
                f"{' or '.join(others)}, a Hugging Face repo id or pvc://<claim>/<path>",
                reason="UnsupportedAdapterSource",
            )

    def check_spec(self, spec: ModelDeploymentSpec) -> None:
        engine = self.registry[spec.engine]
        if spec.task is not None:
            # Only a task the user wrote: one read from the checkpoint is checked by the
            # reconcile pass, which reports it in a condition.
            others = self._suggested(lambda e: spec.task in e.tasks)
            try:
                check_task(engine, spec.task, "spec.task")
            except SpecError as e:
                raise SpecError(
                    e.field, f"{e.message} Use engine {' or '.join(others)}", e.reason
                ) from None
        self._check_gguf_file(spec, engine)
        if spec.gpu.type == CPU_ACCELERATOR and not engine.runs_on_cpu:
            cpu_engines = " or ".join(repr(n) for n in self._suggested(lambda e: e.runs_on_cpu))
            raise SpecError(
                "spec.gpu.type",
                f"'cpu' (CPU-only nodes) needs engine {cpu_engines} with a GGUF model; engine "
                f"{spec.engine!r} needs a GPU type",
                reason="UnsupportedAccelerator",
            )
        # Not an engine's rule, but checked between two of them as the CRD's order has it.
        if spec.gpu.type == CPU_ACCELERATOR and spec.gpu.count not in (None, 1):
            raise SpecError(
                "spec.gpu.count",
                "must be omitted (or 1) with gpu.type 'cpu': one process per replica",
            )
        if (spec.gpu.nodes or 1) > 1 and not engine.spans_nodes:
            others = self._suggested(lambda e: e.spans_nodes)
            raise SpecError(
                "spec.gpu.nodes",
                f"engine {spec.engine!r} runs each replica in one pod on one node: omit "
                f"gpu.nodes (or set 1), or use engine {' or '.join(repr(n) for n in others)}",
                reason="UnsupportedMultiNode",
            )
        # Before sizing, so an unsized s3:// model is not refused for its size instead.
        if spec.model.startswith(OBJECT_STORE_SCHEMES) and not engine.streams_from_object_store:
            others = self._suggested(lambda e: e.streams_from_object_store)
            raise SpecError(
                "spec.model",
                f"engine {spec.engine!r} cannot stream weights from s3:// or gs://; use engine "
                f"{' or '.join(others)}, a Hugging Face repo id or a pvc:// URI",
                reason="UnsupportedModelSource",
            )
        if engine.adapters is None and (spec.adapters or spec.lora is not None):
            others = self._suggested(lambda e: e.adapters is not None)
            raise SpecError(
                "spec.adapters",
                f"engine {spec.engine!r} serves no named LoRA adapters; use engine "
                f"{' or '.join(others)}",
                reason="UnsupportedAdapters",
            )

    def _check_gguf_file(self, spec: ModelDeploymentSpec, engine: Engine) -> None:
        if spec.gguf_file is not None and engine.gguf_file_flag is None:
            gguf_engines = " or ".join(
                repr(n) for n in self._suggested(lambda e: e.gguf_file_flag is not None)
            )
            raise SpecError(
                "spec.ggufFile",
                f"is for engine {gguf_engines} only (spec.engine is {spec.engine!r})",
            )
        if (
            engine.gguf_file_flag is not None
            and not spec.model.startswith("pvc://")
            and not spec.gguf_file
        ):
            raise SpecError(
                "spec.ggufFile",
                f"is required with engine {engine.name!r} and a Hugging Face repo: the .gguf "
                f"file in the repo ({engine.display_name} {engine.gguf_file_flag}), e.g. "
                "Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf; or give the file itself as spec.model "
                "pvc://<claim>/<path>.gguf",
            )
