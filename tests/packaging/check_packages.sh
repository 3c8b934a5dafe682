#!/usr/bin/env bash
# Checks the packages cpack made (tests/packaging/build_packages.sh):
#   - lintian on every .deb: no error and no warning (packaging/debian/lintian-overrides
#     holds the overrides, each with its reason);
#   - rpmlint on every .rpm: no error (packaging/rpm/rpmlint.toml filters, each with its reason);
#   - what each package holds and declares, for deb and rpm alike: the paths inferboxd,
#     systemd and the docs rely on, the conffile, the version, dependencies computed from
#     the binaries (no hand-written library list), the CUDA runtime as a recommendation
#     only, the maintainer scripts.
#   check_packages.sh PACKAGE_DIR SOURCE_DIR VERSION CUDA(ON|OFF)
# Exits 77 (skipped) where lintian or rpmlint is missing (scripts/install-deps.sh installs them).
set -euo pipefail
package_dir=$1
source_dir=$2
version=$3
cuda=$4

failures=0
fail() {
  echo "check_packages: FAILED: $*" >&2
  failures=$((failures + 1))
}
for tool in lintian dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "check_packages: SKIP: $tool is not installed"; exit 77; }
done

server_deb=$(ls "$package_dir"/inferbox_*.deb)
tools_deb=$(ls "$package_dir"/inferbox-tools_*.deb)

# ---- deb ---------------------------------------------------------------------------------
lintian_log=$(mktemp)
trap 'rm -f "$lintian_log"' EXIT
if ! lintian --fail-on error,warning --display-info "$server_deb" "$tools_deb" \
  >"$lintian_log" 2>&1; then
  cat "$lintian_log" >&2
  fail "lintian reports errors or warnings"
else
  echo "check_packages: lintian: no error, no warning"
  cat "$lintian_log"
fi

server_files=$(dpkg-deb -c "$server_deb" | awk '{ print $6 }' | sed 's|^\./|/|')
for path in /usr/sbin/inferboxd /usr/bin/inferboxctl /usr/libexec/inferbox/inferbox-engine \
  /etc/inferbox/inferbox.toml /usr/lib/systemd/system/inferbox.service \
  /usr/lib/sysusers.d/inferbox.conf /usr/lib/tmpfiles.d/inferbox.conf \
  /usr/share/doc/inferbox/copyright /usr/share/doc/inferbox/install.md \
  /usr/share/doc/inferbox/operations.md /usr/share/man/man8/inferboxd.8.gz \
  /usr/share/inferbox/grafana/inferbox-overview.json /usr/share/inferbox/prometheus/alerts.yml; do
  grep -qx "$path" <<<"$server_files" || fail "inferbox .deb lacks $path"
done
tools_files=$(dpkg-deb -c "$tools_deb" | awk '{ print $6 }' | sed 's|^\./|/|')
for path in /usr/bin/inferbox-run /usr/bin/inferbox-bench /usr/bin/inferbox-bundle \
  /usr/bin/inferbox-make-model /usr/share/man/man1/inferbox-bench.1.gz; do
  grep -qx "$path" <<<"$tools_files" || fail "inferbox-tools .deb lacks $path"
done
# The state directory is the daemon's, made by the maintainer scripts and kept by purge: no
# package may own anything under it (dpkg would remove it).
grep -q '^/var/lib/inferbox' <<<"$server_files" && fail "the .deb ships files under /var/lib/inferbox"

[ "$(dpkg-deb -f "$server_deb" Version)" = "$version-1" ] || fail "the .deb's version is not $version-1"
[ "$(dpkg-deb -I "$server_deb" conffiles)" = /etc/inferbox/inferbox.toml ] ||
  fail "the .deb's conffiles are not exactly /etc/inferbox/inferbox.toml"
depends=$(dpkg-deb -f "$server_deb" Depends)
for needed in 'libc6 (>=' 'libgrpc++1.51' 'libprotobuf32' 'libsystemd0' 'adduser'; do
  grep -qF "$needed" <<<"$depends" || fail "the .deb's Depends lacks $needed (computed: $depends)"
done
grep -qi cuda <<<"$depends" && fail "the .deb Depends on CUDA packages: $depends"
recommends=$(dpkg-deb -f "$server_deb" Recommends)
if [ "$cuda" = ON ]; then
  grep -q 'cuda-cudart-[0-9]' <<<"$recommends" && grep -q 'libcublas-[0-9]' <<<"$recommends" &&
    grep -q 'libnccl2' <<<"$recommends" ||
    fail "a CUDA build's .deb does not recommend the CUDA runtime, cuBLAS and NCCL: $recommends"
fi
for script in postinst prerm postrm; do
  dpkg-deb -I "$server_deb" "$script" >/dev/null 2>&1 || fail "the .deb has no $script"
done
grep -qF 'python3-numpy' <<<"$(dpkg-deb -f "$tools_deb" Depends)" ||
  fail "inferbox-tools does not depend on python3-numpy (inferbox-make-model)"

# The SBOM (R6.14) of each package: CycloneDX naming the package at its version and, for every
# library its programs load, the Debian package and the exact version installed on the build
# host (a scanner matches these against CVEs).
check_sbom() {  # check_sbom DEB PACKAGE LIBRARY_PACKAGE...
  local deb=$1 package=$2
  shift 2
  local sbom
  sbom=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/share/doc/$package/sbom.cdx.json" 2>/dev/null) ||
    { fail "$package .deb lacks /usr/share/doc/$package/sbom.cdx.json"; return; }
  local expected=() arch
  arch=$(dpkg --print-architecture)
  for library in "$@"; do
    expected+=("$library=$(dpkg-query -W -f '${Version}' "$library:$arch")")
  done
  "$source_dir/tests/packaging/check_sbom.py" "$package" "$version" "${expected[@]}" <<<"$sbom" ||
    fail "$package's SBOM: see above"
}
check_sbom "$server_deb" inferbox libgrpc++1.51 libprotobuf32 libssl3 libsqlite3-0 libc6
check_sbom "$tools_deb" inferbox-tools libgrpc++1.51 libc6

# ---- rpm ---------------------------------------------------------------------------------
rpms=$(ls "$package_dir"/*.rpm 2>/dev/null || true)
if [ -z "$rpms" ]; then
  echo "check_packages: no .rpm (rpmbuild missing at configure time): rpm checks skipped"
elif ! command -v rpmlint >/dev/null || ! command -v rpm >/dev/null; then
  fail "rpm packages exist but rpm/rpmlint are not installed"
else
  server_rpm=$(ls "$package_dir"/inferbox-"$version"-*.rpm)
  tools_rpm=$(ls "$package_dir"/inferbox-tools-"$version"-*.rpm)
  rpmlint_log=$(mktemp)
  trap 'rm -f "$lintian_log" "$rpmlint_log"' EXIT
  # rpmlint exits 64 on errors and 66 when the badness score passes its threshold.
  if ! rpmlint -c "$source_dir/packaging/rpm/rpmlint.toml" "$server_rpm" "$tools_rpm" >"$rpmlint_log" 2>&1; then
    cat "$rpmlint_log" >&2
    fail "rpmlint reports errors"
  else
    echo "check_packages: rpmlint: $(tail -n 1 "$rpmlint_log")"
    cat "$rpmlint_log"
  fi
  rpm_files=$(rpm -qlp "$server_rpm")
  for path in /usr/sbin/inferboxd /usr/bin/inferboxctl /usr/libexec/inferbox/inferbox-engine \
    /etc/inferbox/inferbox.toml /usr/lib/systemd/system/inferbox.service \
    /usr/lib/sysusers.d/inferbox.conf /usr/lib/tmpfiles.d/inferbox.conf \
    /usr/share/doc/inferbox/install.md /usr/share/doc/inferbox/sbom.cdx.json \
    /usr/share/man/man8/inferboxd.8.gz; do
    grep -qx "$path" <<<"$rpm_files" || fail "inferbox .rpm lacks $path"
  done
  # Directories of the base system (filesystem, systemd) are not the package's to own.
  for dir in /usr /usr/bin /usr/sbin /usr/lib/systemd/system /etc /usr/share/man/man8; do
    grep -qx "$dir" <<<"$rpm_files" && fail "inferbox .rpm claims the system directory $dir"
  done
  grep -qx /usr/bin/inferbox-bench <<<"$(rpm -qlp "$tools_rpm")" || fail "inferbox-tools .rpm lacks inferbox-bench"
  [ "$(rpm -qp --configfiles "$server_rpm")" = /etc/inferbox/inferbox.toml ] ||
    fail "the .rpm's config files are not exactly /etc/inferbox/inferbox.toml"
  [ "$(rpm -qp --qf '%{VERSION}-%{RELEASE}' "$server_rpm")" = "$version-1" ] ||
    fail "the .rpm's version is not $version-1"
  # %config(noreplace): a locally edited file survives upgrades (the new one is .rpmnew).
  rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$server_rpm" | grep -c '^cn /etc/inferbox/inferbox.toml$' >/dev/null ||
    fail "/etc/inferbox/inferbox.toml is not %config(noreplace) in the .rpm"
  requires=$(rpm -qpR "$server_rpm")
  grep -q '^libgrpc++.so.1.51()(64bit)' <<<"$requires" ||
    fail "the .rpm's requires were not computed from the binaries: $requires"
  grep -qi 'cudart\|cublas' <<<"$requires" && fail "the .rpm requires CUDA libraries: $requires"
  grep -q '^shadow-utils' <<<"$requires" || fail "the .rpm does not require shadow-utils for %pre"
  if [ "$cuda" = ON ]; then
    rpm -qp --recommends "$server_rpm" | grep -c '^cuda-cudart-[0-9]' >/dev/null ||
      fail "a CUDA build's .rpm does not recommend the CUDA runtime"
  fi
  scripts=$(rpm -qp --scripts "$server_rpm")
  for needed in 'useradd -r' 'systemctl --no-reload preset' 'disable --now' 'try-restart'; do
    grep -qF -- "$needed" <<<"$scripts" || fail "the .rpm's scripts lack '$needed'"
  done
fi

if [ "$failures" -ne 0 ]; then
  echo "check_packages: $failures check(s) failed" >&2
  exit 1
fi
echo "check_packages: PASSED"
