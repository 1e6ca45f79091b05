#!/usr/bin/env bash
# Debian packages, named by the command each provides: `install-debian-packages.sh
# CMD:PACKAGE...` installs PACKAGE when CMD is not on PATH (apt-get, as root). Without
# apt-get or root it says which to install by hand and goes on.
set -euo pipefail
log() { echo "[install-debian-packages] $*" >&2; }

for pair in "$@"; do
  cmd=${pair%%:*} pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 && continue
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    log "installing $pkg"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg") >&2 \
      || { log "FAILED: apt-get install $pkg (retry: apt-get update && apt-get install -y $pkg)"; exit 1; }
  else
    log "$cmd missing and apt-get unavailable: install $pkg by hand"
  fi
done
