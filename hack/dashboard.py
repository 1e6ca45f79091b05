"""The Grafana dashboard (cost, tokens, utilisation, queue and replicas per model and
namespace), written as JSON to charts/openmodel/files/dashboards/ and manifests/ from
the one list of panels below; `--check` fails when either copy is stale (unit tests).

    python hack/dashboard.py          # write both
    python hack/dashboard.py --check  # exit 1 if a copy differs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
CHART_COPY = REPO / "charts" / "openmodel" / "files" / "dashboards" / "openmodel-cost.json"
MANIFEST_COPY = REPO / "manifests" / "dashboard-cost.yaml"
UID = "openmodel-cost"
SELECTOR = '{namespace=~"$namespace"}'
BY_MODEL = "sum by (namespace, name)"

# (title, unit, query, legend); $__range is the dashboard's time range.
PANELS: list[tuple[str, str, str, str]] = [
    ("Cost per hour", "short",
     f"{BY_MODEL} (openmodel_cost_per_hour{SELECTOR})", "{{namespace}}/{{name}}"),
    ("Cost in the range, per namespace", "short",
     f"sum by (namespace) (increase(openmodel_cost_total{SELECTOR}[$__range]))", "{{namespace}}"),
    ("GPU-hours in the range", "short",
     f"{BY_MODEL} (increase(openmodel_gpu_seconds_total{SELECTOR}[$__range])) / 3600",
     "{{namespace}}/{{name}}"),
    ("GPU utilisation (busy / held)", "percentunit",
     f"{BY_MODEL} (rate(openmodel_gpu_busy_seconds_total{SELECTOR}[5m])) / "
     f"{BY_MODEL} (rate(openmodel_gpu_seconds_total{SELECTOR}[5m]))", "{{namespace}}/{{name}}"),
    ("Cost per million tokens in the range", "short",
     f"{BY_MODEL} (increase(openmodel_cost_total{SELECTOR}[$__range])) / "
     f"({BY_MODEL} (increase(openmodel_engine_prompt_tokens_total{SELECTOR}[$__range])) + "
     f"{BY_MODEL} (increase(openmodel_engine_generation_tokens_total{SELECTOR}[$__range])))"
     " * 1e6", "{{namespace}}/{{name}}"),
    ("Tokens per second (engines)", "short",
     f"{BY_MODEL} (rate(openmodel_engine_generation_tokens_total{SELECTOR}[5m]) + "
     f"rate(openmodel_engine_prompt_tokens_total{SELECTOR}[5m]))", "{{namespace}}/{{name}}"),
    ("Tokens per second by caller namespace (gateway)", "short",
     'sum by (caller_namespace) (rate(openmodel_gateway_usage_prompt_tokens_total'
     f'{SELECTOR}[5m]) + rate(openmodel_gateway_usage_completion_tokens_total{SELECTOR}[5m]))',
     "{{caller_namespace}}"),
    ("Queue depth", "short", f"{BY_MODEL} (openmodel_queue_depth{SELECTOR})",
     "{{namespace}}/{{name}}"),
    ("Replicas the autoscaler decided", "short",
     f"{BY_MODEL} (openmodel_desired_replicas{SELECTOR})", "{{namespace}}/{{name}}"),
]  # fmt: skip


def dashboard() -> dict[str, Any]:
    panels = []
    for i, (title, unit, expr, legend) in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "targets": [{"refId": "A", "expr": expr, "legendFormat": legend}],
            }
        )
    return {
        "uid": UID,
        "title": "openmodel: cost, tokens and utilisation",
        "schemaVersion": 39,
        "time": {"from": "now-24h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus"},
                {
                    "name": "namespace",
                    "type": "query",
                    "datasource": {"type": "prometheus", "uid": "${datasource}"},
                    "query": "label_values(openmodel_gpu_seconds_total, namespace)",
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                },
            ]
        },
        "panels": panels,
    }


def queries() -> list[str]:
    """Every panel's query, as the dashboard holds it."""
    return [expr for _, _, expr, _ in PANELS]


def rendered() -> tuple[str, str]:
    text = json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"
    indented = "".join(f"    {line}\n" for line in text.splitlines())
    manifest = (
        "# The Grafana dashboard (hack/dashboard.py writes it): a ConfigMap Grafana's\n"
        "# dashboard sidecar picks up by its label.\n"
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: openmodel-dashboard-cost\n"
        '  namespace: openmodel-system\n  labels:\n    grafana_dashboard: "1"\n'
        "    app.kubernetes.io/name: openmodel\n    app.kubernetes.io/part-of: openmodel\n"
        f"data:\n  openmodel-cost.json: |\n{indented}"
    )
    return text, manifest


def main(argv: list[str]) -> int:
    text, manifest = rendered()
    if "--check" in argv:
        stale = [
            str(p.relative_to(REPO))
            for p, want in ((CHART_COPY, text), (MANIFEST_COPY, manifest))
            if not p.exists() or p.read_text() != want
        ]
        if stale:
            print(f"stale: {', '.join(stale)} (run python hack/dashboard.py)", file=sys.stderr)
            return 1
        return 0
    CHART_COPY.parent.mkdir(parents=True, exist_ok=True)
    CHART_COPY.write_text(text)
    MANIFEST_COPY.write_text(manifest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
