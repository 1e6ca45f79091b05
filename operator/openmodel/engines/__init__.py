"""The engines openmodel can run, by `spec.engine` name."""

from __future__ import annotations

from collections.abc import Mapping

from openmodel.engines.base import Engine
from openmodel.engines.llamacpp import LlamaCpp
from openmodel.engines.sglang import SGLang
from openmodel.engines.tgi import TGI
from openmodel.engines.vllm import VLLM

ENGINES: Mapping[str, Engine] = {
    "vllm": VLLM(),
    "tgi": TGI(),
    "sglang": SGLang(),
    "llamacpp": LlamaCpp(),
}


def engine_for(name: str) -> Engine:
    return ENGINES[name]
