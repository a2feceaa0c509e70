#!/usr/bin/env bash
# Build the C++ twin (cpp/: train_app, test_app) against the LibTorch of the installed PyTorch,
# idempotently: installs the Debian build tools if they are missing, then configures and builds
# with CMake (a second run only rebuilds what changed).
#   usage: scripts/build_cpp.sh [BUILD_DIR]      (default: cpp/build)
#   env:   PYTHON (the Python whose torch is linked; default: the active conda env's, else
#                  .venv/bin/python, else PYTHON_HINT (the workflow passes its own), else python3)
#          JOBS   (parallel compile jobs, default 2: LibTorch headers are memory- and CPU-heavy)
set -euo pipefail
# BUILD_DIR is taken relative to the caller's directory (Snakemake's working directory)
BUILD=$(realpath -m "${1:-$(dirname "$0")/../cpp/build}")
cd "$(dirname "$0")/.."

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v g++ >/dev/null || missing+=(g++)
[ -f /usr/include/yaml-cpp/yaml.h ] || [ -n "${CONDA_PREFIX:-}" ] || missing+=(libyaml-cpp-dev)
if [ ${#missing[@]} -gt 0 ]; then
    echo "[build_cpp] installing Debian packages: ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y \
           -qq --no-install-recommends "${missing[@]}"; } >/tmp/earlyad-apt-cpp.log 2>&1; then
        echo "[build_cpp] error: could not install ${missing[*]} (see /tmp/earlyad-apt-cpp.log);" \
             "install them by hand: apt-get install ${missing[*]}" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    if [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python" ]; then
        PYTHON=$CONDA_PREFIX/bin/python
    elif [ -x .venv/bin/python ]; then
        PYTHON=.venv/bin/python
    elif [ -n "${PYTHON_HINT:-}" ]; then
        PYTHON=$PYTHON_HINT
    else
        PYTHON=python3
    fi
fi
if ! TORCH_PREFIX=$("$PYTHON" -c "import torch; print(torch.utils.cmake_prefix_path)"); then
    echo "[build_cpp] error: $PYTHON cannot import torch; run scripts/setup.sh first" >&2
    exit 1
fi
TORCH_DIR_ARG=()
[ -f "$TORCH_PREFIX/Torch/TorchConfig.cmake" ] && TORCH_DIR_ARG=(-DTorch_DIR="$TORCH_PREFIX/Torch")
mkdir -p "$BUILD"
start=$(date +%s)
cmake -S cpp -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "${TORCH_DIR_ARG[@]}" \
    -DCMAKE_PREFIX_PATH="${CONDA_PREFIX:-/usr};$TORCH_PREFIX" >"$BUILD/configure.log" 2>&1 || {
    cat "$BUILD/configure.log" >&2
    echo "[build_cpp] error: CMake configuration failed (log above)" >&2
    exit 1
}
cmake --build "$BUILD" -j "${JOBS:-2}"
echo "[build_cpp] train_app and test_app in $BUILD ($(($(date +%s) - start)) s)"
