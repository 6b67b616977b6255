#!/usr/bin/env bash
# Install everything the test suite needs into .venv and run all tests.
# The tests start their own redis-server, Celery workers, servers, nginx and Chromium.
set -euo pipefail
cd "$(dirname "$0")"
# System packages the browser and reverse-proxy tests drive (Playwright uses
# this chromium; it downloads no browser of its own).
if ! command -v chromium >/dev/null || ! test -x /usr/sbin/nginx; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium nginx
fi
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
