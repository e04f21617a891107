# Shared by scripts/setup (development) and scripts/install (a hypervisor): apt packages,
# the kernel-header links bcc needs, and a venv that sees Debian's bcc module.
# Source it after setting LOG_TAG; every function checks before it changes anything.

log() { printf '%s: %s\n' "${LOG_TAG:-transparent-md}" "$*" >&2; }

# Package mirrors hiccup; a set-up that gives up on the first timeout fails CI for nothing.
retry() {
  local attempt
  for attempt in 1 2 3; do
    "$@" && return 0
    log "attempt $attempt of: $* failed; retrying in $((attempt * 5)) s"
    sleep $((attempt * 5))
  done
  "$@"
}

require_root() {
  if [ "$(id -u)" != 0 ]; then
    log "must run as root (it installs packages and loads BPF programs)"
    exit 1
  fi
}

# apt_ensure PKG...: install the packages that are missing, with no daemon starting.
apt_ensure() {
  local missing=() pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$pkg")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Daemons in these packages (dhcpd, kea, nginx, etcd) must not start on the host.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  retry apt-get update -q >/dev/null
  retry apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

# bcc compiles against /lib/modules/$(uname -r)/build; this kernel ships no headers, so
# point the links at Debian's newest linux-headers-*-amd64 (close enough for our programs).
link_kernel_headers() {
  local kdir ver
  kdir="/lib/modules/$(uname -r)"
  [ -e "$kdir/build/include" ] && return 0
  ver=$(ls /usr/src | sed -n 's/^linux-headers-\(.*\)-amd64$/\1/p' | sort -V | tail -1)
  [ -n "$ver" ] || { log "no /usr/src/linux-headers-*-amd64 found"; exit 1; }
  log "linking kernel headers $ver into $kdir"
  mkdir -p "$kdir"
  ln -sfn "/usr/src/linux-headers-$ver-amd64" "$kdir/build"
  ln -sfn "/usr/src/linux-headers-$ver-common" "$kdir/source"
}

# venv_with_bcc DIR: a venv at DIR whose interpreter also sees Debian's bcc package and
# its libnftables binding (only those: the rest of /usr/lib/python3/dist-packages stays out).
venv_with_bcc() {
  local dir=$1 py=${PYTHON:-python3} site
  if [ ! -x "$dir/bin/python" ]; then
    log "creating $dir with $($py --version)"
    "$py" -m venv "$dir"
  fi
  mkdir -p "$dir/debian-bcc"
  ln -sfn /usr/lib/python3/dist-packages/bcc "$dir/debian-bcc/bcc"
  ln -sfn /usr/lib/python3/dist-packages/nftables "$dir/debian-bcc/nftables"
  site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "$(cd "$dir" && pwd)/debian-bcc" > "$site/debian-bcc.pth"
}
