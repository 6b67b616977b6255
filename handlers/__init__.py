"""Tornado handlers: thin adapters between HTTP/WebSocket and the core."""

from .dashboard import STATIC_DIR, DashboardHandler, StaticHandler
from .health import LivenessHandler, ReadinessHandler
from .metrics import MetricsHandler
from .rest import QueueStatusHandler
from .websocket import TaskSocketHandler


def routes(server):
    """The URL table, each handler given the one `NotifyServer`."""
    args = {"server": server}
    return [
        (r"/ws/tasks/?", TaskSocketHandler, args),
        (r"/api/tasks/queue/status/?", QueueStatusHandler, args),
        (r"/healthz", LivenessHandler),
        (r"/readyz", ReadinessHandler, args),
        (r"/metrics", MetricsHandler, args),
        (r"/", DashboardHandler),
        (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
    ]
