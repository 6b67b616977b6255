"""`GET /metrics`: Prometheus text exposition of this process's metrics."""

import hmac

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST

from notify_server.access.auth import bearer_token


class MetricsHandler(tornado.web.RequestHandler):
    """`GET /metrics`: 200, Prometheus text format. With a `metrics_token`,
    only for ``Authorization: Bearer <metrics_token>``: 401 otherwise.
    Without one it is open, like `/healthz` (restrict it at the proxy)."""

    def initialize(self, server, metrics_token) -> None:
        self.server = server
        self.metrics_token = metrics_token

    def get(self) -> None:
        if self.metrics_token:
            given = bearer_token(self.request.headers.get("Authorization")) or ""
            if not hmac.compare_digest(given.encode(), self.metrics_token.encode()):
                self.set_header("WWW-Authenticate", 'Bearer realm="metrics"')
                self.set_status(401)
                self.set_header("Content-Type", "text/plain; charset=UTF-8")
                self.finish("a bearer token is required for /metrics\n")
                return
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.server.metrics.exposition())
