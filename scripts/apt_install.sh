# Sourced by scripts/install_*.sh: install Debian packages with apt-get, quietly, as root or with passwordless sudo.
# `apt_install <what is missing> <package>...` updates the package lists once, then installs the packages without
# recommends; on failure it shows the tail of apt-get's output and calls the caller's `die`. APT_TIMEOUT_S bounds
# each apt-get call (default 600 s).
apt_install() {
  local what="$1"
  shift
  command -v apt-get >/dev/null 2>&1 || die "$what is missing and there is no apt-get to install it (not Debian/Ubuntu?)"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo=(sudo -n)
    else
      die "$what is missing and installing it needs root (run: sudo apt-get install $*)"
    fi
  fi
  local log
  log="$(mktemp -t apt-install.XXXXXX.log)"
  _apt() {  # quiet apt-get; on failure show its output
    if ! timeout "${APT_TIMEOUT_S:-600}" "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "$@" >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      rm -f "$log"
      die "apt-get $* failed (see above)"
    fi
  }
  # A fresh machine has no package lists yet; a stale list can point at removed .debs. Update once, then install.
  _apt update -q
  _apt install -y -q --no-install-recommends "$@"
  rm -f "$log"
}
