#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run all tests.
# The tests start their own redis-server, Celery workers and server processes.
set -euo pipefail
cd "$(dirname "$0")"
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
