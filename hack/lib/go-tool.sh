# Sourced by the hack/build-<tool>.sh scripts: builds one Go tool from a wrapper module
# under hack/ (its go.mod pins the tool's module and, through go.sum, every dependency)
# into a versioned cache directory, with the module and build caches every Go build here
# shares (hack/build-control-plane.sh), so a dependency compiled once is compiled once.
#
#   go_tool NAME WRAPPER_DIR "MODULE VERSION" PACKAGE [go build flags...]
#
# builds PACKAGE ("." for the wrapper's own main) as NAME into
# $OPENMODEL_CACHE/bin/NAME-VERSION-<hash of the wrapper's go.mod, go.sum and *.go>/ unless
# it is there, checks that go.mod requires MODULE at VERSION, and prints that directory.
# Environment: OPENMODEL_CACHE (default ~/.cache/openmodel).

go_tool() {
  local name=$1 dir=$2 pin=$3 package=$4
  shift 4
  local version=${pin##* }
  local cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
  local sources=("$dir"/go.mod "$dir"/go.sum)
  local file
  for file in "$dir"/*.go; do
    [ -e "$file" ] && sources+=("$file")
  done
  local bin
  bin="$cache/bin/$name-$version-$(cat "${sources[@]}" | sha256sum | cut -c1-12)"
  export GOMODCACHE="$cache/go/mod"
  export GOCACHE="$cache/go/build"
  export GOFLAGS=-mod=mod
  export CGO_ENABLED=0
  local script="hack/build-$name.sh"

  _go_tool_fail() {
    echo "[build-$name] FAILED at step: $1" >&2
    echo "[build-$name] retry with: $2" >&2
    exit 1
  }

  command -v go >/dev/null 2>&1 || _go_tool_fail "find the Go toolchain (go is not on PATH)" \
    "install Go >= 1.26, then: bash $script"
  grep -Eq "(^|[[:space:]])$pin([[:space:]]|\$)" "$dir/go.mod" \
    || _go_tool_fail "check $dir/go.mod requires $pin" "set the same version in $script and $dir/go.mod"

  if [ ! -x "$bin/$name" ]; then
    mkdir -p "$bin" "$GOMODCACHE" "$GOCACHE"
    local start=$SECONDS
    echo "[build-$name] $name $version ..." >&2
    (cd "$dir" && go mod download) \
      || _go_tool_fail "download Go modules (network or module proxy)" "bash $script  # downloads resume from $GOMODCACHE"
    (cd "$dir" && go build -trimpath -ldflags "-s -w" "$@" -o "$bin/$name.tmp" "$package") \
      || _go_tool_fail "go build" "bash $script  # compiled packages are cached in $GOCACHE"
    mv "$bin/$name.tmp" "$bin/$name"
    echo "[build-$name] $name done in $((SECONDS - start)) s" >&2
  fi
  echo "$bin"
}
