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
# The seed's Vue and React components, built by tests/browser/test_seed_clients.py
# with Vite 7, which needs Node.js 20.19 or newer (the machine's; Debian's is older).
if ! node -e 'const [a, b] = process.versions.node.split(".").map(Number); process.exit(a > 20 || (a === 20 && b >= 19) ? 0 : 1)' 2>/dev/null; then
    echo "test.sh: the browser and JS client tests need Node.js 20.19 or newer with npm on PATH" >&2
    exit 1
fi
npm ci --prefix tests/browser/seed_apps --no-audit --no-fund --loglevel=error
# The TypeScript compiler that tests/integration/test_client_types.py checks the JS
# client's declarations with (a devDependency of clients/notify-client/, pinned).
npm ci --prefix clients/notify-client --no-audit --no-fund --loglevel=error
exec .venv/bin/python -m pytest "$@"
