#!/usr/bin/env bash
# redis-server for the shared rate-budget tests (tests/test_ratelimit.py) and the distributed stack: Debian's
# `redis-server` package. Idempotent: a working redis-server is left alone; otherwise `apt-get update` +
# `apt-get install --no-install-recommends redis-server`. The package's own service is not needed: tests start
# their own server on a free 127.0.0.1 port in a temporary folder. Needs root (or passwordless sudo) to install.
# Exit 0: `redis-server --version` works. Exit 1: it does not, with the reason on stderr.
set -euo pipefail

PACKAGES=(redis-server)
APT_TIMEOUT_S="${APT_TIMEOUT_S:-600}"

say() { printf 'install_redis: %s\n' "$*"; }
die() { printf 'install_redis: %s\n' "$*" >&2; exit 1; }

if version="$(redis-server --version 2>/dev/null)"; then
  say "ready: $version"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "redis-server is missing and there is no apt-get to install it (not Debian/Ubuntu?)"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  die "redis-server is missing and installing it needs root (run: sudo apt-get install redis-server)"
fi

log="$(mktemp -t install-redis.XXXXXX.log)"
trap 'rm -f "$log"' EXIT
apt() {  # quiet apt-get; on failure show its output
  if ! timeout "$APT_TIMEOUT_S" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "apt-get $* failed (see above)"
  fi
}

started=$SECONDS
say "installing ${PACKAGES[*]} with apt-get"
apt update -q
apt install -y -q --no-install-recommends "${PACKAGES[@]}"

version="$(redis-server --version 2>&1)" || die "redis-server --version fails: $version"
say "ready: $version (installed in $((SECONDS - started))s)"
