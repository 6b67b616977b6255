"""A token in `?token=` is a credential: neither the server's access log nor the
deployed nginx's access log writes it down."""

import time
from pathlib import Path

import jwt

from tests.support.client import WsClient
from tests.support.nginx import Nginx
from tests.support.processes import start_server
from tests.support.waiting import eventually
from tests.support.wsframes import free_port

SECRET = "log-test-secret-" + "x" * 32


async def test_the_token_in_the_query_is_redacted_in_both_access_logs(redis_server):
    token = jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, SECRET,
                       algorithm="HS256")
    server, port = start_server(redis_server.url, "--xheaders",
                                env={"NOTIFY_AUTH_SECRET": SECRET})
    nginx = Nginx(free_port(), [port, port])
    try:
        client = await WsClient.connect(nginx.port, f"token={token}&last_event_id=1-0")
        await client.wait_for(lambda m: m["type"] == "queue_status")  # admitted by its token
        client.connection.close(1000)
        assert await client.wait_closed() == 1000  # the server echoed our close
        access_log = Path(nginx.dir) / "notify-server.access.log"

        async def logged():
            return access_log.read_text() if access_log.exists() else ""

        nginx_line = await eventually(logged, lambda text: "/ws/tasks/" in text)
        server_line = server.wait_for_line(r"GET /ws/tasks/\S*").group(0)
    finally:
        nginx.stop()
        server.stop()

    assert "?token=[redacted]&last_event_id=1-0" in nginx_line
    assert server_line == "GET /ws/tasks/?token=[redacted]&last_event_id=1-0"
    assert token not in nginx_line and token not in "".join(server.output)
