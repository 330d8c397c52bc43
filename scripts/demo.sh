#!/usr/bin/env bash
# The README's main command: installs missing packages, builds the tool in release mode and
# runs the end-to-end demo on the embedded model.
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_debian_packages
swift build -c release --product kvtc >&2
exec .build/release/kvtc demo "$@"
