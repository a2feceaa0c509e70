#!/usr/bin/env bash
# README command 2 (and CI): set up, then run the test suite, slow end-to-end tests included.
# Extra arguments go to pytest (e.g. -m "not slow" for the quick unit tests only).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pytest -ra "$@"
status=$?
if [ "$status" -eq 5 ]; then
    echo "[test] pytest collected no tests: treating as failure" >&2
    exit 1
fi
exit "$status"
