#!/bin/sh
# Puts Prometheus's promtool (from Debian's prometheus package) into DEST_DIR for the tests
# that check the metrics, the scrape config and the alert rules. The package is extracted,
# not installed: installing it would start a Prometheus server on the machine. Uses a
# promtool already on PATH when there is one.
#   scripts/fetch-promtool.sh DEST_DIR
set -eu
mkdir -p "$1"
dest=$(cd "$1" && pwd)
[ -x "$dest/promtool" ] && exit 0
if command -v promtool >/dev/null 2>&1; then
  ln -sf "$(command -v promtool)" "$dest/promtool"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download prometheus >/dev/null 2>&1; then
  echo "fetch-promtool: apt-get download prometheus failed (is the package index current? run scripts/install-deps.sh)" >&2
  exit 1
fi
dpkg-deb -x prometheus_*.deb root
cp root/usr/bin/promtool "$dest/promtool.tmp"
mv "$dest/promtool.tmp" "$dest/promtool"
