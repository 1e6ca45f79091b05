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

# shellcheck source=go-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-env.sh"

go_tool() {
  local name=$1 dir=$2 pin=$3 package=$4
  shift 4
  local version=${pin##* }
  go_env "$name"
  local sources=("$dir"/go.mod "$dir"/go.sum)
  local file
  for file in "$dir"/*.go; do
    [ -e "$file" ] && sources+=("$file")
  done
  local bin
  bin="$cache/bin/$name-$version-$(cat "${sources[@]}" | sha256sum | cut -c1-12)"
  grep -Eq "(^|[[:space:]])$pin([[:space:]]|\$)" "$dir/go.mod" \
    || fail "check $dir/go.mod requires $pin" "set the same version in $script and $dir/go.mod"

  if [ ! -x "$bin/$name" ]; then
    mkdir -p "$bin"
    # A temporary name, so an interrupted build never leaves a half binary behind.
    go_build_step "$name $version" "$dir" -ldflags "-s -w" "$@" -o "$bin/$name.tmp" "$package"
    mv "$bin/$name.tmp" "$bin/$name"
  fi
  echo "$bin"
}
