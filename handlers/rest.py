"""REST: `GET /api/tasks/queue/status`."""

from .envelope import JsonHandler


class QueueStatusHandler(JsonHandler):
    """`GET /api/tasks/queue/status`: the queue snapshot in the seed's envelope.

    200 ``{"code": 200, "message": "success", "data": {...queue_status data}}``
    when a snapshot exists; if the last poll failed, `data.stale` is true and
    `message` says why. 503 ``{"code": 503, "message": <why>, "data": null}``
    when no poll has ever succeeded. In token mode the token (`?token=` or
    `Authorization: Bearer`) scopes the lists as on the socket; without a
    valid one: 401 with `WWW-Authenticate: Bearer` and the reason. CORS as
    every `JsonHandler`.
    """

    def initialize(self, server) -> None:
        self.server = server

    def get(self) -> None:
        scope = self.scope_or_401(self.server)
        if scope is None:
            return
        data, reason = self.server.queue_snapshot(scope)
        if data is None:
            self.send_envelope(503, reason, None)
            return
        self.send_envelope(200, "success" if reason is None else f"stale: {reason}", data)
