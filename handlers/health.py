"""Liveness and readiness probes: `/healthz` and `/readyz`."""

import hmac
from typing import Optional

import orjson
import tornado.web

from notify_server.access.auth import bearer_token


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
    WARNING: not ready is an answer, not a server error.

    In token mode the stale reason is given by its kind only (``broker
    unreachable``, not the broker's address in the error after it), unless
    the request carries ``Authorization: Bearer <metrics_token>``."""

    unready_is_expected = True

    def initialize(self, server, metrics_token: str = "") -> None:
        self.server = server
        self.metrics_token = metrics_token

    def get(self) -> None:
        health = self.server.health()
        if self.server.config.access.auth_secrets and not self._operator():
            health["queue_stale_reason"] = reason_kind(health["queue_stale_reason"])
        self.set_status(200 if health["ready"] else 503)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps(health))

    def _operator(self) -> bool:
        given = bearer_token(self.request.headers.get("Authorization")) or ""
        return bool(self.metrics_token) and hmac.compare_digest(given.encode(),
                                                                self.metrics_token.encode())


def reason_kind(reason: Optional[str]) -> Optional[str]:
    """A stale reason without its details: the part before the first colon
    ("broker unreachable: OperationalError: Error 111 connecting to h:p" is
    "broker unreachable")."""
    return None if reason is None else reason.partition(":")[0]
