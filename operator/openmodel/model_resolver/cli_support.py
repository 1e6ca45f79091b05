"""The CLI's resolution: synchronous, one model at a time, the same answers as the
operator's loop (a failure falls back to the catalogue and says why)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from openmodel.api import ModelDeploymentSpec, SpecError
from openmodel.config import PlatformConfig
from openmodel.model_resolver.hub import HubClient, ResolveError
from openmodel.model_resolver.local import looks_local, read_local
from openmodel.model_resolver.loop import resolve_once
from openmodel.model_resolver.state import ModelConfigState, ModelRef, Resolved
from openmodel.model_resolver.store import model_ref_for
from openmodel.sizing.checkpoint import Checkpoint, CheckpointError, read_checkpoint


def resolve_for_spec(
    spec: ModelDeploymentSpec, annotations: Mapping[str, Any] | None, config: PlatformConfig
) -> ModelConfigState | None:
    """Resolved/Failed for a repo id when an endpoint is configured, else None."""
    endpoint = config.model_resolver.effective_endpoint()
    ref = model_ref_for(spec, annotations)
    if endpoint is None or ref is None:
        return None
    return asyncio.run(resolve_once(HubClient(endpoint, config.model_resolver), ref, 0))


def checkpoint_for_cli(
    model: str, config: PlatformConfig, offline: bool
) -> tuple[Checkpoint | None, str]:
    """(checkpoint, a line saying where it came from) for `openmodel size`."""
    if looks_local(model):
        try:
            files = read_local(model)
            path = Path(model)
            name = path.parent.name if path.name == "config.json" else path.stem or path.name
            checkpoint = read_checkpoint(
                files.config, name, files.index, files.headers, files.files
            )
            return checkpoint, (f"Read:    {model} (local config.json)")
        except (ResolveError, CheckpointError) as e:
            raise SpecError(
                "model", str(e), getattr(e, "reason", "ModelConfigUnsupported")
            ) from None
    endpoint = config.model_resolver.effective_endpoint()
    if offline or endpoint is None or "://" in model:
        return None, ""
    state = asyncio.run(
        resolve_once(HubClient(endpoint, config.model_resolver), ModelRef(model), 0)
    )
    if isinstance(state, Resolved):
        return state.checkpoint, f"Read:    config.json of {model}@{state.sha}"
    print(
        f"openmodel: config.json of {model} not read ({getattr(state, 'reason', '')}: "
        f"{getattr(state, 'message', '')}); using the catalogue",
        file=sys.stderr,
    )
    return None, ""
