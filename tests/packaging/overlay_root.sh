# shellcheck shell=bash
# Sourced by the package tests (install_test.sh, update_test.sh): a throwaway root, an overlay
# over this machine's / inside private mount, PID and network namespaces, so nothing a test
# does reaches the host and nothing reaches the network.
#
# The sourcing script sets test_name, then
#   outside: overlay_root_check TOOL...   (skips, exit 77, when it cannot run here)
#            overlay_root_enter "$0" ARG...  (reruns "$0 --inside WORK ARG..." in the
#                                             namespaces and exits with its status)
#   inside:  overlay_root_mount WORK      (sets root and upper; in_root runs in the root)
#
# Pipes end in `grep -c ... >/dev/null`, never `grep -q`: grep -q exits at the first match, the
# writer then dies of SIGPIPE, and pipefail turns a match into a failure (it did, on CI).

readonly kSkip=77
: "${test_name:?set test_name before sourcing overlay_root.sh}"

say() { echo "$test_name: $*"; }
fail() {
  echo "$test_name: FAILED: $*" >&2
  exit 1
}
skip() {
  echo "$test_name: SKIP: $*"
  exit "$kSkip"
}

overlay_root_check() {
  [ "$(id -u)" -eq 0 ] || skip "needs root (mount namespace, overlayfs, chroot); run ctest as root"
  local tool
  for tool in unshare chroot setpriv ip curl "$@"; do
    command -v "$tool" >/dev/null || skip "$tool is not installed"
  done
  unshare --mount --net --pid --fork --propagation private true 2>/dev/null ||
    skip "creating mount, network and PID namespaces is not permitted here"
}

overlay_root_enter() {
  local script=$1
  shift
  work=$(mktemp -d "${TMPDIR:-/tmp}/inferbox-$test_name.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  # PID 1 of the new PID namespace is the inner run: when it ends, for any reason, every
  # process it started (inferboxd, engines) is killed, and the mounts go with the namespace.
  local status=0
  unshare --mount --net --pid --fork --mount-proc --propagation private \
    "$script" --inside "$work" "$@" || status=$?
  exit "$status"
}

overlay_root_mount() {
  local work=$1
  root=$work/root
  upper=$work/upper
  mkdir -p "$upper" "$work/overlay-work" "$root"
  mount -t overlay overlay -o "lowerdir=/,upperdir=$upper,workdir=$work/overlay-work" "$root" ||
    skip "mounting an overlay over / is not permitted here"
  mount -t proc proc "$root/proc"
  mount --rbind /dev "$root/dev"
  mount -t tmpfs -o mode=0755 tmpfs "$root/run"
  mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
  ip link set lo up
  # man-db's dpkg trigger would rebuild the whole manual index (minutes on two cores); its own
  # switch turns it off.
  rm -f "$root/var/lib/man-db/auto-update"
}

in_root() {
  chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}
