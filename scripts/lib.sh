# Shared set-up for the README's commands: installs what a fresh Debian machine lacks.
set -euo pipefail

# Debian packages the build links against (OpenBLAS with LAPACK, LAPACKE, libdeflate) and
# what fetching the embedded model needs (pip).
KVTC_DEBIAN_PACKAGES=(libopenblas-dev liblapacke-dev libdeflate-dev python3-pip)

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
