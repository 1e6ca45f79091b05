"""Writes the Grafana dashboard (openmodel/metering/dashboard.py) as JSON into
charts/openmodel/files/dashboards/ and as a ConfigMap into manifests/; `--check` fails
when either copy is stale (unit tests).

    python hack/dashboard.py          # write both
    python hack/dashboard.py --check  # exit 1 if a copy differs
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from openmodel.metering.dashboard import dashboard

REPO = Path(__file__).resolve().parents[1]
CHART_COPY = REPO / "charts" / "openmodel" / "files" / "dashboards" / "openmodel-cost.json"
MANIFEST_COPY = REPO / "manifests" / "dashboard-cost.yaml"


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
