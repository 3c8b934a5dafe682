#!/usr/bin/env bash
# Installs every Debian 12 package that inferbox's build, tests and tools need.
# The only install step: `make build`, `make run` and `make test` call it.
# Idempotent and quiet when everything is present; runs `apt-get update` at most once.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  protobuf-compiler libprotobuf-dev protobuf-compiler-grpc libgrpc++-dev grpc-proto
  prometheus-cpp-dev
  libsystemd-dev
  libboost1.81-dev libboost-json1.81-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libsqlite3-dev libssl-dev libcurl4-openssl-dev libpcre2-dev
  libarchive-dev
  libtomlplusplus-dev libcli11-dev libspdlog-dev libfmt-dev libutf8proc-dev libopenblas-dev
  clang-format
  # `make fuzz` (scripts/fuzz.sh): clang with libFuzzer and the sanitizers' runtimes, and
  # llvm-symbolizer for their stack traces.
  clang libclang-rt-14-dev llvm-14
  # The tiny-model generator (tools/inferbox-make-model) and the reference forward pass
  # (tests/reference/forward_reference.py) run on Debian's Python with numpy.
  python3 python3-numpy
  # The packages (packaging/) and their tests (tests/packaging): dpkg-shlibdeps, rpmbuild,
  # the two linters, manual pages made from --help, and the install test's tools; openssl
  # makes the update bundles' signing keys (make update-bundle, tests/packaging/update_test.sh).
  dpkg-dev rpm rpmlint lintian help2man curl iproute2 util-linux openssl
)

# Node.js runs the reference implementations the tests compare with (tests/reference). A
# machine that already has node and npm (e.g. from NodeSource) keeps them.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  packages+=(nodejs npm)
fi

missing=()
for package in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$package" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
