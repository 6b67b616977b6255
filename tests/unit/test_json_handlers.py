"""The JSON API's errors, on a real Tornado server in this process whose core
object fails on purpose (the only way to see a 500 from outside)."""

import json

from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from handlers import make_application
from notify_server.access.auth import EVERYONE


class OpenAdmission:
    def authenticate(self, token):
        return EVERYONE


class BrokenServer:
    admission = OpenAdmission()

    def queue_snapshot(self, scope):
        raise RuntimeError("a bug behind the endpoint")


async def test_an_internal_error_on_the_api_is_the_json_envelope_with_cors(io_loop, caplog):
    application = make_application(BrokenServer(), allowed_origins=("http://app.test",),
                                   max_message_size=1024)
    [sock] = bind_sockets(0, "127.0.0.1")
    http_server = HTTPServer(application)
    http_server.add_sockets([sock])
    try:
        response = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{sock.getsockname()[1]}/api/tasks/queue/status?token=sEcReT",
            headers={"Origin": "http://app.test"}, raise_error=False)
    finally:
        http_server.stop()

    assert response.code == 500
    assert json.loads(response.body) == {"code": 500, "message": "internal server error",
                                         "data": None}
    assert response.headers["Access-Control-Allow-Origin"] == "http://app.test"
    assert response.headers["Content-Type"].startswith("application/json")
    # The bug is logged with its traceback, the token in the query string is not.
    [logged] = [r for r in caplog.records if r.name == "tornado.application"]
    assert "RuntimeError: a bug behind the endpoint" in caplog.text
    assert "GET /api/tasks/queue/status (127.0.0.1)" in logged.getMessage()
    assert "sEcReT" not in caplog.text
