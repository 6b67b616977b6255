#!/usr/bin/env bash
# The fan-out benchmark, one command: bench/run.sh [--quick] [options; --help lists them]
# Creates bench/.venv with the server's and the benchmark's requirements, then runs
# bench/main.py from the repository root. Loopback only; every process it starts is
# stopped by PID when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x bench/.venv/bin/python ]; then
    python3 -m venv bench/.venv
fi
bench/.venv/bin/pip install --quiet --disable-pip-version-check \
    -r requirements.txt -r bench/requirements.txt
exec bench/.venv/bin/python -m bench.main "$@"
