"""Liveness and readiness probes: `/healthz` and `/readyz`."""

import orjson
import tornado.web


class LivenessHandler(tornado.web.RequestHandler):
    """`GET /healthz`: 200 ``{"status": "ok"}`` while the event loop answers."""

    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(b'{"status":"ok"}')


class ReadinessHandler(tornado.web.RequestHandler):
    """`GET /readyz`: 200 when the events subscription is up and the broker
    answered the last inspect poll, else 503. The body says which check fails
    and why the queue snapshot is stale, if it is: ``{"ready", "redis",
    "broker", "queue_stale_reason", "clients"}``. Its 503 is logged at
    WARNING: not ready is an answer, not a server error."""

    unready_is_expected = True

    def initialize(self, server) -> None:
        self.server = server

    def get(self) -> None:
        health = self.server.health()
        self.set_status(200 if health["ready"] else 503)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(health))
