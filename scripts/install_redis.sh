#!/usr/bin/env bash
# redis-server for the shared rate-budget tests (tests/test_ratelimit.py) and the distributed stack: Debian's
# `redis-server` package. Idempotent: a working redis-server is left alone; otherwise `apt-get update` +
# `apt-get install --no-install-recommends redis-server`. The package's own service is not needed: tests start
# their own server on a free 127.0.0.1 port in a temporary folder. Needs root (or passwordless sudo) to install.
# Exit 0: `redis-server --version` works. Exit 1: it does not, with the reason on stderr.
set -euo pipefail
# shellcheck source=scripts/apt_install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh"

PACKAGES=(redis-server)

say() { printf 'install_redis: %s\n' "$*"; }
die() { printf 'install_redis: %s\n' "$*" >&2; exit 1; }

if version="$(redis-server --version 2>/dev/null)"; then
  say "ready: $version"
  exit 0
fi

started=$SECONDS
say "installing ${PACKAGES[*]} with apt-get"
apt_install redis-server "${PACKAGES[@]}"

version="$(redis-server --version 2>&1)" || die "redis-server --version fails: $version"
say "ready: $version (installed in $((SECONDS - started))s)"
