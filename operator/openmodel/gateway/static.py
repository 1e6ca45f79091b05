"""Routes from a file instead of the cluster (benchmarks, local experiments):

```yaml
models:
  - name: llama              # the served model name clients send
    namespace: bench         # where it would live (labels, /demand)
    modelDeployment: llama
    engine: <spec.engine>    # port and metric names; default: spec.engine's default
    port: 8000
    hosts: [127.0.0.1, 127.0.0.2]
    adapters: [sql-lora]     # optional
    task: generate           # optional: generate (default), embed or rerank
```
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from openmodel.api import DEFAULT_ENGINE
from openmodel.engines import engine_for
from openmodel.gateway.routes import Backend, RouteTable
from openmodel.gateway.tasks import GENERATE, TASK_PATHS


class RoutesFileError(ValueError):
    pass


def _pod(name: str, host: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "phase": "Running",
            "podIP": host,
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def load_static_routes(path: Path, table: RouteTable) -> None:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RoutesFileError(f"{path}: {e}") from None
    models = raw.get("models") if isinstance(raw, Mapping) else None
    if not isinstance(models, list):
        raise RoutesFileError(f"{path}: needs a `models` list")
    for i, m in enumerate(models):
        where = f"{path}: models[{i}]"
        if not isinstance(m, Mapping) or not isinstance(m.get("name"), str):
            raise RoutesFileError(f"{where} needs a string `name`")
        engine = str(m.get("engine", DEFAULT_ENGINE))
        try:
            default_port = engine_for(engine).port
        except (KeyError, ValueError):
            raise RoutesFileError(f"{where}: unknown engine {engine!r}") from None
        hosts = m.get("hosts") or []
        if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
            raise RoutesFileError(f"{where}: `hosts` must be a list of addresses")
        task = m.get("task", GENERATE)
        if task not in TASK_PATHS:
            raise RoutesFileError(f"{where}: `task` must be one of {', '.join(TASK_PATHS)}")
        key = (str(m.get("namespace", "default")), str(m.get("modelDeployment", m["name"])))
        backend = Backend(
            key=key,
            served_name=m["name"],
            adapters=frozenset(str(a) for a in m.get("adapters") or []),
            engine=engine,
            port=int(m.get("port", default_port)),
            task=task,
        )
        table.put_backend(backend, [_pod(f"{key[1]}-{j}", h) for j, h in enumerate(hosts)])
