#!/usr/bin/env bash
# Builds llama.cpp's real `llama-server` (CPU build) for the real-engine tests, into a
# cache directory that stands for the ghcr.io/ggml-org/llama.cpp images' filesystem
# (bin/llama-server), plus llama.cpp's own gguf-py and a small virtualenv for it (py/:
# numpy, tqdm, pyyaml, requests), with which the tests write their tiny GGUF model.
# Prints the directory on stdout; everything else goes to stderr. Safe to run again: a
# finished build (stamp file) is reused as it is.
#
# Where the source comes from: no registry here ships llama-server itself (Debian has
# no llama.cpp package; PyPI's llama-cpp-python wheels carry only the library). Its
# source distribution vendors the whole llama.cpp tree (vendor/llama.cpp, tools/server
# included), so `pip download --no-binary` of it and a CMake build of the one target
# give the real server. ~3.5 min cold on 2 cores at -O1; the binary is ~15 MB, static ggml.
set -euo pipefail
log() { echo "[install-llama-server] $*" >&2; }
fail() { log "FAILED at step '$1'. Retry: rm -rf '$dir' && bash hack/install-llama-server.sh"; exit 1; }

version=${OPENMODEL_LLAMA_CPP_PYTHON_VERSION:-0.3.36}
py=${PYTHON:-python3}
cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
# -O1: the tests run tiny models, where the server's speed does not matter, and -O1
# compiles in about a quarter of Release's -O3 time on 2 cores (measured, see README).
# The level is in the directory's name, so a change of it is a new build.
optimize=-O1
dir=${OPENMODEL_LLAMA_SERVER_ROOT:-$cache/llama-server-$version$optimize}
stamp="$dir/.openmodel-complete"

if [ "${1:-}" = "--dir" ]; then
  echo "$dir"
  exit 0
fi
if [ -f "$stamp" ]; then
  echo "$dir"
  exit 0
fi
for tool in cmake g++ make; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool missing (apt-get install cmake g++ make)"
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "step 1/3: pip download llama-cpp-python==$version (source distribution)"
"$py" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  "llama-cpp-python==$version" -d "$work" >&2 || fail "pip download"
tar -xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work" || fail "unpack"
src="$work/llama_cpp_python-$version/vendor/llama.cpp"

log "step 2/3: cmake configure (server only: no tests, examples, web UI, OpenSSL)"
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS_RELEASE="$optimize -DNDEBUG" -DCMAKE_CXX_FLAGS_RELEASE="$optimize -DNDEBUG" -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF >&2 || fail "cmake configure"
log "step 3/3: build llama-server ($(nproc) jobs; ~3.5 min on 2 cores)"
cmake --build "$work/build" --target llama-server -j"$(nproc)" >&2 || fail "cmake build"

rm -rf "$dir"
mkdir -p "$dir/bin"
cp "$work/build/bin/llama-server" "$dir/bin/" || fail "install"
cp -r "$src/gguf-py" "$dir/gguf-py" || fail "copy gguf-py"
"$py" -m venv "$dir/py" || fail "python -m venv"
"$dir/py/bin/pip" install -q --disable-pip-version-check numpy tqdm pyyaml requests >&2 \
  || fail "pip install gguf-py's dependencies"
"$dir/bin/llama-server" --version >&2 || fail "llama-server --version"
touch "$stamp"
echo "$dir"
