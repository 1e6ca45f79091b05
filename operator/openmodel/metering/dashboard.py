"""The Grafana dashboard of docs/cost.md: cost, tokens, utilisation, queue and replicas per
model and namespace, as data (hack/dashboard.py writes it into the chart and manifests/;
the tests run every query against a real Prometheus)."""

from __future__ import annotations

from typing import Any

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
