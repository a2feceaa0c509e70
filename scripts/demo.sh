#!/usr/bin/env bash
# README command 1: set up, then run the whole workflow on the built-in synthetic cohort.
# Extra arguments go to snakemake (e.g. --cores 2, -n, --report report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
source .venv/bin/activate   # clinica and dcm2niix are called from the venv's bin/
snakemake --cores all "$@"
snakemake --report results/report.html
echo "[demo] done: open results/report.html in a browser"
