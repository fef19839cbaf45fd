#!/usr/bin/env bash
# Installs the Debian packages Ferry's tests use. One list, used by `make test`
# and by .ci/run. Without root it says what it could not install and returns 0:
# the tests that need a missing tool skip with a clear message (or fail under
# FERRY_CI=1).
set -u
PKGS=(xfsprogs btrfs-progs e2fsprogs util-linux qemu-utils fuse3 rsync zstd
      debootstrap systemd-container curl ca-certificates iproute2 nftables
      libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 iptables
      prometheus chromium extlinux syslinux-common fdisk postgresql)
# prometheus: promtool checks the /metrics output. chromium: the web console
# tests drive it headless (internal/e2e/console_*_test.go).
# extlinux, syslinux-common, fdisk: the drill test's bootable disk (internal/e2e/bootdisk_test.go).
# postgresql: a database under pgbench fails over from a tracked freeze
# (internal/e2e/postgres_linux_test.go, internal/pgtest, ferrybench -cases pgtrack).

# Debian's libvirt QEMU driver refuses to initialise without these (no
# systemd-sysusers here); internal/libvirtd creates them too. Idempotent.
qemu_users() {
  [ "$(id -u)" -eq 0 ] || return 0
  for g in kvm libvirt libvirt-qemu; do getent group "$g" >/dev/null || groupadd -r "$g"; done
  id libvirt-qemu >/dev/null 2>&1 ||
    useradd -r -g libvirt-qemu -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
}
trap qemu_users EXIT

# staticcheck, pinned (make check runs it); a Go toolchain is enough.
STATICCHECK_VERSION=v0.8.2 # staticcheck 2026.2.2, which supports Go 1.26
gobin="$(go env GOPATH 2>/dev/null)/bin"
if command -v go >/dev/null 2>&1 && ! "$gobin/staticcheck" -version 2>/dev/null | grep -q "(${STATICCHECK_VERSION#v})"; then
  go install "honnef.co/go/tools/cmd/staticcheck@$STATICCHECK_VERSION" || echo "test-deps: could not install staticcheck" >&2
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
  echo "test-deps: not root; cannot install: ${missing[*]}" >&2
  echo "test-deps: tests that need them will skip (FERRY_CI=1 makes such skips fail)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
stamp=/var/lib/apt/periodic/ferry-update-stamp
if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +360 2>/dev/null)" ]; then
  apt-get update -qq >/dev/null 2>&1 || echo "test-deps: apt-get update failed" >&2
  mkdir -p "$(dirname "$stamp")" && touch "$stamp"
fi
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
  echo "test-deps: apt-get install failed for some of: ${missing[*]}" >&2
  # Install one by one so one unavailable package does not block the others.
  for p in "${missing[@]}"; do
    apt-get install -y -qq --no-install-recommends "$p" >/dev/null 2>&1 || echo "test-deps: could not install $p" >&2
  done
fi
exit 0
