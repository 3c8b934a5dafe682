#!/usr/bin/env bash
# Builds the deb (and rpm) packages of the build tree BUILD_DIR afresh into BUILD_DIR/packages
# with cpack, as `cmake --build BUILD_DIR --target package` does.
#   build_packages.sh CPACK BUILD_DIR
set -euo pipefail
cpack=$1
build_dir=$2
rm -rf "$build_dir/packages"
cd "$build_dir"
"$cpack" --config CPackConfig.cmake
ls -l packages/
