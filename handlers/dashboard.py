"""The dashboard page at `/` and its static files at `/static/...`.

Every URL the page uses is relative to the page, so the same files work at
`/` and under a reverse proxy's path prefix (`/tasks-monitor/`). The JS
client is the npm package's own file (`clients/notify-client/`), served as
`/static/notify-client.js` beside the dashboard's: one file, never a copy.
"""

from pathlib import Path

import tornado.web

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "notify_server" / "dashboard"
STATIC_DIR = DASHBOARD_DIR / "static"
PAGE = DASHBOARD_DIR / "index.html"
CLIENT_DIR = ROOT / "clients" / "notify-client"
CLIENT_FILE = "notify-client.js"

# Scripts, styles and the socket come from this server only: no CDN, no inline script.
CONTENT_SECURITY_POLICY = ("default-src 'self'; connect-src 'self'; img-src 'self' data:; "
                           "base-uri 'none'; form-action 'none'")


class DashboardHandler(tornado.web.RequestHandler):
    """`GET /` (and `HEAD /`): the dashboard page (HTML, read once at start-up).

    `Cache-Control: no-cache` with an ETag: a browser revalidates and gets
    304 until the server is upgraded.
    """

    page = PAGE.read_bytes()

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        self.set_header("X-Content-Type-Options", "nosniff")
        self.finish(self.page)

    head = get


class StaticHandler(tornado.web.StaticFileHandler):
    """`GET /static/<file>`: the dashboard's scripts and styles and the JS client.

    URLs carry no version, so every response says `Cache-Control: no-cache`:
    browsers revalidate with the ETag and never run a stale client. Any
    origin may load the files (`import` of a module from another origin
    needs CORS); they are public and carry no credentials, and who may open
    a socket is still decided by `allowed_origins`.
    """

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Access-Control-Allow-Origin", "*")
        self.set_header("X-Content-Type-Options", "nosniff")

