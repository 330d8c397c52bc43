# Shared set-up for the README's commands: installs what a fresh Debian machine lacks.
set -euo pipefail

# Debian packages the build links against (OpenBLAS with LAPACK, LAPACKE, libdeflate), what
# fetching the embedded model needs (pip), and the Redis server and redis-cli that the tests
# of the Redis tier start (a standalone node, a TLS one with certificates made by openssl,
# and a three-master cluster on loopback).
KVTC_DEBIAN_PACKAGES=(libopenblas-dev liblapacke-dev libdeflate-dev libzstd-dev libdnnl-dev python3-pip redis-server redis-tools openssl)

ensure_debian_packages() {
    local missing=()
    for p in "${KVTC_DEBIAN_PACKAGES[@]}"; do
        # python3-pip may come from elsewhere (pyenv); accept any working pip.
        if [ "$p" = python3-pip ] && python3 -m pip --version >/dev/null 2>&1; then continue; fi
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}" >&2
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
    fi
    command -v swift >/dev/null || { echo "error: swift is not on PATH (Swift 6 toolchain required)" >&2; exit 1; }
}

# OpenBLAS 0.3.21 (Debian 12) does not recognise some AVX-512 CPUs and falls back to its SSE3
# "Prescott" kernels there (sgemm ~26 instead of ~190 GFLOP/s on two cores). The kvtc tool
# corrects this itself at start (Sources/kvtc/OpenBLASTuning.swift); the test process loads
# OpenBLAS directly, so the same choice is made here for it. A value already set is kept.
select_openblas_core() {
    [ -n "${OPENBLAS_CORETYPE:-}" ] && return 0
    local chosen flags
    chosen=$(python3 -c 'import ctypes; l = ctypes.CDLL("libopenblas.so.0"); l.openblas_get_corename.restype = ctypes.c_char_p; print(l.openblas_get_corename().decode())' 2>/dev/null) || return 0
    case "$chosen" in Prescott|Core2|Penryn|Dunnington|Nehalem|Atom|Barcelona) ;; *) return 0 ;; esac
    flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
    local core=""
    if [[ $flags == *" avx512f "* && $flags == *" avx512bw "* && $flags == *" avx512dq "* && $flags == *" avx512vl "* && $flags == *" avx512cd "* ]]; then
        core=SkylakeX
        [[ $flags == *" avx512_bf16 "* ]] && core=Cooperlake
    elif [[ $flags == *" avx2 "* && $flags == *" fma "* ]]; then
        core=Haswell
    fi
    if [ -n "$core" ]; then
        echo "OpenBLAS chose its generic $chosen kernels on this CPU; using $core (OPENBLAS_CORETYPE)" >&2
        export OPENBLAS_CORETYPE=$core
    fi
}
