"""`GET /metrics`: Prometheus text exposition of this process's metrics."""

import tornado.web
from prometheus_client import CONTENT_TYPE_LATEST


class MetricsHandler(tornado.web.RequestHandler):
    """`GET /metrics`: 200, Prometheus text format (unauthenticated, like
    `/healthz`; restrict it at the proxy if it must not be public)."""

    def initialize(self, server) -> None:
        self.server = server

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(self.server.metrics_text())
