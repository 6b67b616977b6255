"""REST: `GET /api/tasks/queue/status`."""

import tornado.web

from notify_server import messages

from .origin import origin_allowed


class QueueStatusHandler(tornado.web.RequestHandler):
    """`GET /api/tasks/queue/status`: the queue snapshot in the seed's envelope.

    200 ``{"code": 200, "message": "success", "data": {...queue_status data}}``
    when a snapshot exists; if the last poll failed, `data.stale` is true and
    `message` says why. 503 ``{"code": 503, "message": <why>, "data": null}``
    when no poll has ever succeeded. Sends CORS headers for allowed origins.
    """

    def initialize(self, server) -> None:
        self.server = server

    def set_default_headers(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and origin_allowed(origin, self.server.settings.allowed_origins):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")

    def get(self) -> None:
        data = self.server.queue.data()
        reason = self.server.queue.stale_reason
        if data is None:
            self.set_status(503)
            self.finish(messages.encode({"code": 503, "message": reason, "data": None}))
            return
        message = "success" if reason is None else f"stale: {reason}"
        self.finish(messages.encode({"code": 200, "message": message, "data": data}))
