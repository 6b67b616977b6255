"""Tornado handlers: thin adapters between HTTP/WebSocket and the core."""

import re

import tornado.web
from tornado.log import access_log

from .dashboard import CLIENT_DIR, CLIENT_FILE, STATIC_DIR, DashboardHandler, StaticHandler
from .envelope import ApiNotFoundHandler
from .health import LivenessHandler, ReadinessHandler
from .metrics import MetricsHandler
from .openapi import OpenApiHandler
from .rest import QueueStatusHandler
from .tasks import TaskHandler, TaskListHandler, TaskMinutesHandler
from .websocket import TaskSocketHandler

# A token in a query string (`?token=...`) is a credential: never written to the log.
TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&#]*")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's access log line (status, method, URI, client, duration) with
    any `token=` query value replaced by `[redacted]`: 4xx, and the 503 of a
    probe saying "not ready yet", at WARNING; other 5xx at ERROR."""
    status = handler.get_status()
    if status < 400:
        log_method = access_log.info
    elif status < 500 or (status == 503 and getattr(handler, "unready_is_expected", False)):
        log_method = access_log.warning
    else:
        log_method = access_log.error
    request = handler.request
    log_method("%d %s %s (%s) %.2fms", status, request.method,
               TOKEN_IN_QUERY.sub(r"\1[redacted]", request.uri), request.remote_ip,
               1000.0 * request.request_time())


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
            (r"/ws/tasks/?", TaskSocketHandler, args),
            (r"/api/tasks/queue/status/?", QueueStatusHandler, args),
            (r"/api/tasks/stats/minutes/?", TaskMinutesHandler, args),
            (r"/api/tasks/?", TaskListHandler, args),
            (r"/api/tasks/([^/]+)/?", TaskHandler, args),
            (r"/api/openapi.json", OpenApiHandler),
            (r"/api/.*", ApiNotFoundHandler),
            (r"/healthz", LivenessHandler),
            (r"/readyz", ReadinessHandler, {**args, "metrics_token": metrics_token}),
            (r"/metrics", MetricsHandler, {**args, "metrics_token": metrics_token}),
            (r"/", DashboardHandler),
            (rf"/static/({re.escape(CLIENT_FILE)})", StaticHandler, {"path": str(CLIENT_DIR)}),
            (r"/static/(.*)", StaticHandler, {"path": str(STATIC_DIR)}),
        ],
        allowed_origins=tuple(allowed_origins),
        log_function=log_request,
        websocket_max_message_size=max_message_size,
    )
