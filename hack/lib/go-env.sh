# Sourced by every hack/build-*.sh that builds Go: one environment, one failure message
# shape and one build step for all of them, so every Go build here shares the module and
# build caches (a dependency compiled once is compiled once) and fails the same way.
#
#   go_env NAME [GOFLAGS]   sets GOMODCACHE, GOCACHE, GOFLAGS (default -mod=mod) and
#                           CGO_ENABLED=0, defines log/fail for [build-NAME], and fails
#                           with a hint when go is not on PATH. Sets `cache` (the cache
#                           root) and `script` (hack/build-NAME.sh) for the caller.
#   go_build_step STEP DIR [go build args...]
#                           `go mod download` then `go build -trimpath ARGS` in DIR,
#                           each failure named with how to retry.
# Environment: OPENMODEL_CACHE (default ~/.cache/openmodel); GO_MIN_HINT (the Go version
# the hint asks for, default ">= 1.26").

go_env() {
  _go_name=$1
  cache=${OPENMODEL_CACHE:-$HOME/.cache/openmodel}
  script="hack/build-$_go_name.sh"
  export GOMODCACHE="$cache/go/mod"
  export GOCACHE="$cache/go/build"
  export GOFLAGS=${2:--mod=mod}
  export CGO_ENABLED=0
  command -v go >/dev/null 2>&1 || fail "find the Go toolchain (go is not on PATH)" \
    "install Go ${GO_MIN_HINT:->= 1.26} (e.g. your distribution's golang-go), then: bash $script"
  mkdir -p "$GOMODCACHE" "$GOCACHE"
}

log() { echo "[build-$_go_name] $*" >&2; }

fail() {
  # $1 = step, $2 = how to retry
  log "FAILED at step: $1"
  log "retry with: $2"
  exit 1
}

go_build_step() {
  local step=$1 dir=$2
  shift 2
  local start=$SECONDS
  log "$step ..."
  (cd "$dir" && go mod download) \
    || fail "$step: download Go modules (network or module proxy)" "bash $script  # downloads resume from $GOMODCACHE"
  (cd "$dir" && go build -trimpath "$@") \
    || fail "$step: go build" "bash $script  # compiled packages are cached in $GOCACHE"
  log "$step done in $((SECONDS - start)) s"
}
