#!/usr/bin/env bash
# Chromium for the browser tests (tests/test_browser.py): Debian's package at /usr/bin/chromium, driven by the
# Playwright Python package (Playwright's own browser downloads are never used). Idempotent: a working Chromium is
# left alone; otherwise `apt-get update` + `apt-get install --no-install-recommends chromium` plus the fonts the UI
# screenshots need. Needs root (or passwordless sudo) for the install.
# Exit 0: `chromium --version` works. Exit 1: it does not, with the reason on stderr.
set -euo pipefail
# shellcheck source=scripts/apt_install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt_install.sh"

CHROMIUM=/usr/bin/chromium
PACKAGES=(chromium fonts-dejavu-core fonts-liberation)

say() { printf 'install_browser: %s\n' "$*"; }
die() { printf 'install_browser: %s\n' "$*" >&2; exit 1; }

chromium_version() { "$CHROMIUM" --version 2>/dev/null; }

if [ -x "$CHROMIUM" ] && version="$(chromium_version)"; then
  say "ready: $version"
  exit 0
fi

started=$SECONDS
say "installing ${PACKAGES[*]} with apt-get (Debian's chromium package)"
apt_install "$CHROMIUM" "${PACKAGES[@]}"

[ -x "$CHROMIUM" ] || die "apt-get installed ${PACKAGES[*]} but $CHROMIUM does not exist"
version="$(chromium_version)" || die "$CHROMIUM --version fails: $("$CHROMIUM" --version 2>&1 | tail -n 5)"
say "ready: $version (installed in $((SECONDS - started))s)"
