"""Tornado handlers: thin adapters between HTTP/WebSocket and the core."""

import tornado.web

from .dashboard import STATIC_DIR, DashboardHandler, StaticHandler
from .health import LivenessHandler, ReadinessHandler
from .json import ApiNotFoundHandler
from .metrics import MetricsHandler
from .rest import QueueStatusHandler
from .websocket import TaskSocketHandler


def make_application(server, *, allowed_origins, max_message_size: int,
                     metrics_token: str = "") -> tornado.web.Application:
    """The Tornado application: the URL table, each handler given the one
    `NotifyServer`. `allowed_origins` may open a socket and read the API
    cross-origin ("*" allows any); inbound frames over `max_message_size`
    bytes close the socket with 1009; `/metrics` needs the bearer
    `metrics_token` when one is given."""
    args = {"server": server}
    return tornado.web.Application(
        [
            (r"/ws/tasks/?", TaskSocketHandler, {**args, "allowed_origins": allowed_origins}),
            (r"/api/tasks/queue/status/?", QueueStatusHandler, args),
            (r"/api/.*", ApiNotFoundHandler),
            (r"/healthz", LivenessHandler),
            (r"/readyz", ReadinessHandler, args),
            (r"/metrics", MetricsHandler, {**args, "metrics_token": metrics_token}),
            (r"/", DashboardHandler),
            (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
        ],
        allowed_origins=tuple(allowed_origins),
        websocket_max_message_size=max_message_size,
    )
