#!/usr/bin/env bash
# Installs checkov (the infrastructure-as-code scanner, from PyPI) into its own cached
# virtual environment, never the project's .venv: its dependency tree is large (over a
# hundred packages) and pins versions the operator's own dependencies need to move past.
# For tests/e2e/test_linters.py. Prints the environment's directory on stdout; everything
# else goes to stderr. Safe to run again: a finished environment (stamp file) is reused.
#   --dir   print where the environment is (or would be) and stop
# Environment:
#   OPENMODEL_CACHE   cache root (default ~/.cache/openmodel)
set -euo pipefail
log() { echo "[install-checkov] $*" >&2; }
fail() { log "FAILED at step '$1'. Retry: rm -rf '$dir' && bash hack/install-checkov.sh"; exit 1; }

checkov_version=3.3.30
py=${PYTHON:-python3}
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
dir="$cache/checkov-$checkov_version-py$pyver"
stamp="$dir/.openmodel-complete"

if [ "${1:-}" = "--dir" ]; then
  echo "$dir"
  exit 0
fi
if [ -f "$stamp" ]; then
  echo "$dir"
  exit 0
fi

start=$SECONDS
log "installing checkov $checkov_version into $dir"
rm -rf "$dir"
"$py" -m venv "$dir" || fail "python -m venv"
pip=("$dir/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip >&2 || fail "pip upgrade"
"${pip[@]}" "checkov==$checkov_version" >&2 || fail "pip install checkov==$checkov_version"
"$dir/bin/checkov" --version >&2 || fail "checkov --version"
touch "$stamp"
log "done in $((SECONDS - start)) s: $(du -sh "$dir" | cut -f1)"
echo "$dir"
