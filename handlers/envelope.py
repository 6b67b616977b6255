"""The base of the JSON API endpoints: the seed's envelope for every answer and
every error, and CORS for the allowed origins."""

from typing import Optional

import orjson
import tornado.web
from tornado.httputil import responses
from tornado.log import app_log, gen_log

from notify_server.access.auth import AuthError, Scope, bearer_token

from .origin import origin_allowed


def write_envelope(handler: tornado.web.RequestHandler, code: int, message: str, data) -> None:
    """Finish `handler`'s request with HTTP status `code` and the envelope
    ``{"code", "message", "data"}`` as JSON (any handler, the socket's too)."""
    handler.set_status(code)
    handler.set_header("Content-Type", "application/json; charset=UTF-8")
    handler.finish(orjson.dumps({"code": code, "message": message, "data": data}))


def log_exception(handler: tornado.web.RequestHandler, typ, value, tb) -> None:
    """Tornado's log of an error in a handler, without the request's query
    string (a `?token=` is a credential): HTTP errors as a warning, anything
    else as an error with its traceback."""
    request = handler.request
    summary = f"{request.method} {request.path} ({request.remote_ip})"
    if isinstance(value, tornado.web.HTTPError):
        if value.log_message:
            gen_log.warning("%d %s: %s", value.status_code, summary,
                            value.log_message % value.args if value.args else value.log_message)
        return
    app_log.error("Uncaught exception %s", summary, exc_info=(typ, value, tb))


# Headers a browser may send cross-origin (Authorization for tokens, Content-Type for JSON).
ALLOWED_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE = "600"


class JsonHandler(tornado.web.RequestHandler):
    """Answers ``{"code", "message", "data"}`` with `code` equal to the HTTP status.

    Errors (404, 405, 500, ...) get the same envelope with ``data: null``,
    never Tornado's HTML page. A request whose `Origin` is allowed
    (`allowed_origins` in the application settings) gets
    `Access-Control-Allow-Origin: <origin>` and `Vary: Origin`, on errors
    too; `OPTIONS` answers the CORS preflight: 204 for an allowed origin,
    403 in the envelope for another.
    """

    def set_default_headers(self) -> None:
        # Runs in the constructor (before `initialize`) and again before an
        # error page: only the request and the application exist here.
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.set_header("Vary", "Origin")
        origin = self.request.headers.get("Origin")
        if origin and self.origin_allowed(origin):
            self.set_header("Access-Control-Allow-Origin", origin)

    def origin_allowed(self, origin: str) -> bool:
        return origin_allowed(origin, self.application.settings["allowed_origins"])

    def options(self, *args) -> None:
        origin = self.request.headers.get("Origin")
        if not origin or not self.origin_allowed(origin):
            self.send_envelope(403, "origin not allowed", None)
            return
        self.set_header("Access-Control-Allow-Methods", "GET, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", ALLOWED_HEADERS)
        self.set_header("Access-Control-Max-Age", PREFLIGHT_MAX_AGE)
        self.clear_header("Content-Type")
        self.set_status(204)
        self.finish()

    def send_envelope(self, code: int, message: str, data) -> None:
        write_envelope(self, code, message, data)

    def scope_or_401(self, server) -> Optional[Scope]:
        """The scope of the request's token (`?token=` or `Authorization:
        Bearer`; open mode: everything), or None after answering 401 with
        `WWW-Authenticate: Bearer` and the reason."""
        token = (self.get_query_argument("token", None)
                 or bearer_token(self.request.headers.get("Authorization")))
        try:
            return server.admission.authenticate(token)
        except AuthError as exc:
            self.set_header("WWW-Authenticate", 'Bearer realm="notify-server"')
            self.send_envelope(401, str(exc), None)
            return None

    def log_exception(self, typ, value, tb) -> None:
        log_exception(self, typ, value, tb)

    def write_error(self, status_code: int, **kwargs) -> None:
        error = kwargs.get("exc_info", (None, None, None))[1]
        reason = responses.get(status_code, "error")
        if isinstance(error, tornado.web.HTTPError) and isinstance(error.reason, str):
            reason = error.reason  # a reason the code chose for people, never an internal one
        self.finish(orjson.dumps({"code": status_code, "message": reason.lower(),
                                     "data": None}))


class ApiNotFoundHandler(JsonHandler):
    """Any other path under `/api/`: 404 in the envelope."""

    def prepare(self) -> None:
        raise tornado.web.HTTPError(404)
