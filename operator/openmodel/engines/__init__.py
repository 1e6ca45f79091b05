"""The engines openmodel can run, by `spec.engine` name, and the parse that applies
their rules: what the rest of the package asks about an engine, it asks here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openmodel.api import ModelDeployment, ModelDeploymentSpec
from openmodel.api import parse_model_deployment as _parse_model_deployment
from openmodel.api import parse_spec as _parse_spec
from openmodel.engines.base import Engine
from openmodel.engines.llamacpp import LlamaCpp
from openmodel.engines.rules import RegistryRules
from openmodel.engines.sglang import SGLang
from openmodel.engines.tgi import TGI
from openmodel.engines.vllm import VLLM

ENGINES: Mapping[str, Engine] = {
    "vllm": VLLM(),
    "tgi": TGI(),
    "sglang": SGLang(),
    "llamacpp": LlamaCpp(),
}
RULES = RegistryRules(ENGINES)


def engine_for(name: str) -> Engine:
    return ENGINES[name]


def default_images() -> dict[str, str]:
    """`engineImages` before the platform config's overrides: each engine's image, and
    `<name>-cpu` where the engine has another build for gpu.type cpu."""
    images = {name: engine.image for name, engine in ENGINES.items()}
    images.update(
        {f"{name}-cpu": e.cpu_image for name, e in ENGINES.items() if e.cpu_image is not None}
    )
    return images


def parse_spec(raw: Mapping[str, Any]) -> ModelDeploymentSpec:
    """`api.parse_spec` with the engines' rules: raises SpecError naming the field."""
    return _parse_spec(raw, RULES)


def parse_model_deployment(body: Mapping[str, Any]) -> ModelDeployment:
    """`api.parse_model_deployment` with the engines' rules: the parse every caller uses."""
    return _parse_model_deployment(body, RULES)
