#!/usr/bin/env bash
# PostgreSQL and Redis for the distributed stack (scripts/distributed.sh): Debian's `postgresql` and `redis-server`
# packages. Only their binaries are used (initdb/postgres under /usr/lib/postgresql/<version>/bin, redis-server), each
# run by the stack in its own folder on 127.0.0.1; the packages' own services are never started. Idempotent: present
# binaries are left alone; otherwise `apt-get update` + `apt-get install --no-install-recommends` the missing
# packages. Needs root (or passwordless sudo) for the install.
# Exit 0: both work, prints the PostgreSQL bin folder on stdout. Exit 1: they do not, with the reason on stderr.
set -euo pipefail
# shellcheck source=scripts/apt_install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh"


say() { printf 'install_services: %s\n' "$*" >&2; }
die() { printf 'install_services: %s\n' "$*" >&2; exit 1; }

pg_bin() {  # the newest installed PostgreSQL's bin folder
  local dir
  dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && echo "$dir"
}

missing=()
pg_bin >/dev/null || missing+=(postgresql)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)

if [ ${#missing[@]} -gt 0 ]; then
  started=$SECONDS
  say "installing ${missing[*]} with apt-get"
  apt_install "${missing[*]}" "${missing[@]}"
  say "installed in $((SECONDS - started))s"
fi

bin="$(pg_bin)" || die "postgresql installed but no initdb/postgres under /usr/lib/postgresql/*/bin"
"$bin/postgres" --version >&2 || die "$bin/postgres --version fails"
redis-server --version >&2 || die "redis-server --version fails"
echo "$bin"
