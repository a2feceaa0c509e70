#!/usr/bin/env bash
# Set up everything earlyad needs on a fresh Debian/Ubuntu machine, idempotently:
#   - Debian's mricron-data (the Colin27 brain and the AAL atlas the synthetic cohort is made from)
#   - a virtual environment .venv with the earlyad package, Snakemake, Clinica, dcm2niix, ANTsPy
#     and the CPU build of PyTorch.
# A second run only checks (a stamp holds the hash of pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

TEMPLATES=/usr/share/mricron/templates
if [ ! -f "$TEMPLATES/ch2.nii.gz" ] || [ ! -f "$TEMPLATES/aal.nii.gz" ]; then
    echo "[setup] installing Debian package mricron-data (Colin27 + AAL templates)"
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    if ! { $SUDO apt-get update -qq && \
           DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
           mricron-data; } >/tmp/earlyad-apt.log 2>&1; then
        echo "[setup] error: could not install mricron-data (see /tmp/earlyad-apt.log);" \
             "install it by hand: apt-get install mricron-data" >&2
        exit 1
    fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
STAMP=.venv/.earlyad-setup
WANT=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "[setup] installing Python packages into .venv (first time: several minutes)"
    .venv/bin/python -m pip install -q --upgrade pip
    # The CPU wheel of PyTorch first: a plain 'torch' requirement would pull a multi-GB CUDA build.
    .venv/bin/python -m pip install -q "torch==2.13.0"
    .venv/bin/python -m pip install -q -e ".[workflow,clinica,train,gradcam,dev]"
    echo "$WANT" > "$STAMP"
fi
# The C++ twin (cpp/, issue 8): CMake, g++ and yaml-cpp from Debian, LibTorch from the wheel.
# Incremental: a second run only checks. EARLYAD_SKIP_CPP=1 skips it.
if [ "${EARLYAD_SKIP_CPP:-0}" != "1" ]; then
    PYTHON=.venv/bin/python bash scripts/build_cpp.sh cpp/build >/tmp/earlyad-build-cpp.log 2>&1 || {
        tail -40 /tmp/earlyad-build-cpp.log >&2
        echo "[setup] error: building the C++ twin failed (log: /tmp/earlyad-build-cpp.log)" >&2
        exit 1
    }
fi
echo "[setup] ready: $(.venv/bin/snakemake --version | head -1) snakemake," \
     "$(.venv/bin/clinica --version 2>/dev/null | tail -1)"
