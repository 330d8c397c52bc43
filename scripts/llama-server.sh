#!/usr/bin/env bash
# Builds llama.cpp's llama-server (that target only, CPU, no web UI, no downloads) from the
# llama.cpp tree vendored by PyPI's llama-cpp-python sdist, caches it outside the repository
# and prints the binary's path. A cached binary is reused.
#
#   scripts/llama-server.sh            # prints e.g. ~/.cache/kvtc/llama-server/0.3.36/bin/llama-server
#
# The pin: llama-cpp-python 0.3.36 carries llama.cpp 0c1e57098 (its CHANGELOG says so).
set -euo pipefail
LLAMA_CPP_PYTHON_VERSION=0.3.36
LLAMA_CPP_COMMIT=0c1e57098
SDIST_SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e

cache="${KVTC_CACHE_DIR:-$HOME/.cache/kvtc}/llama-server/$LLAMA_CPP_PYTHON_VERSION"
binary="$cache/bin/llama-server"
if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
    echo "$binary"
    exit 0
fi

for tool in cmake g++ make; do
    command -v "$tool" >/dev/null || missing_tools="${missing_tools:-} $tool"
done
if [ -n "${missing_tools:-}" ]; then
    echo "installing Debian packages for the llama-server build:${missing_tools}" >&2
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq cmake g++ make >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building llama-server from llama-cpp-python $LLAMA_CPP_PYTHON_VERSION (llama.cpp $LLAMA_CPP_COMMIT); this takes several minutes" >&2
python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" -d "$work" >&2
sdist="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz"
echo "$SDIST_SHA256  $sdist" | sha256sum --check --quiet - || { echo "error: $sdist does not have the pinned SHA-256" >&2; exit 1; }
tar -xzf "$sdist" -C "$work"
src="$work/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/vendor/llama.cpp"

# GGML_NATIVE compiles for this CPU (AVX-512 where it has it), as a local llama.cpp build does.
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
    -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_NUMBER=0 -DLLAMA_BUILD_COMMIT="$LLAMA_CPP_COMMIT" >&2
cmake --build "$work/build" --target llama-server -j "$(nproc)" >&2

mkdir -p "$cache/bin"
cp "$work/build/bin/llama-server" "$binary.tmp"
mv "$binary.tmp" "$binary"
echo "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION, llama.cpp $LLAMA_CPP_COMMIT" > "$cache/VERSION"
echo "$binary"
