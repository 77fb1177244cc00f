#!/usr/bin/env bash
# Chromium for the browser tests (tests/test_browser.py): Debian's package at /usr/bin/chromium, driven by the
# Playwright Python package (Playwright's own browser downloads are never used). Idempotent: a working Chromium is
# left alone; otherwise `apt-get update` + `apt-get install --no-install-recommends chromium` plus the fonts the UI
# screenshots need. Needs root (or passwordless sudo) for the install.
# Exit 0: `chromium --version` works. Exit 1: it does not, with the reason on stderr.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
PACKAGES=(chromium fonts-dejavu-core fonts-liberation)
APT_TIMEOUT_S="${APT_TIMEOUT_S:-600}"

say() { printf 'install_browser: %s\n' "$*"; }
die() { printf 'install_browser: %s\n' "$*" >&2; exit 1; }

chromium_version() { "$CHROMIUM" --version 2>/dev/null; }

if [ -x "$CHROMIUM" ] && version="$(chromium_version)"; then
  say "ready: $version"
  exit 0
fi

command -v apt-get >/dev/null 2>&1 || die "$CHROMIUM is missing and there is no apt-get to install it (not Debian/Ubuntu?)"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO=(sudo -n)
else
  die "$CHROMIUM is missing and installing it needs root (run: sudo apt-get install chromium)"
fi

log="$(mktemp -t install-browser.XXXXXX.log)"
trap 'rm -f "$log"' EXIT
apt() {  # quiet apt-get; on failure show its output
  if ! timeout "$APT_TIMEOUT_S" "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "apt-get $* failed (see above)"
  fi
}

started=$SECONDS
say "installing ${PACKAGES[*]} with apt-get (Debian's chromium package)"
# A fresh machine has no package lists yet; a stale list can point at removed .debs. Update once, then install.
apt update -q
apt install -y -q --no-install-recommends "${PACKAGES[@]}"

[ -x "$CHROMIUM" ] || die "apt-get installed ${PACKAGES[*]} but $CHROMIUM does not exist"
version="$(chromium_version)" || die "$CHROMIUM --version fails: $("$CHROMIUM" --version 2>&1 | tail -n 5)"
say "ready: $version (installed in $((SECONDS - started))s)"
