#!/usr/bin/env bash
# The test command: installs what is missing, then runs lint, types, import layers and every test
# (unit + e2e against the real local control plane). Extra args go to pytest.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
bash hack/bootstrap.sh
.venv/bin/ruff check operator tests perf
.venv/bin/mypy
# The layer map of docs/architecture.md (pyproject.toml, [tool.importlinter]).
.venv/bin/lint-imports --no-cache
exec .venv/bin/pytest -q -p no:cacheprovider --durations=12 "$@"
