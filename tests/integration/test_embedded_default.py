"""`python run.py` with nothing configured runs on its own embedded Redis."""

import json

from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from notify_server.worker.emitter import Emitter
from notify_server.protocol import task_events
from tests.support.client import WsClient
from tests.support.processes import start_server


async def test_run_py_with_nothing_configured_serves_on_its_embedded_redis():
    child, port = start_server(None, env={"NOTIFY_INSPECT_TIMEOUT": "0.3"}, name="embedded")
    try:
        redis_url = child.wait_for_line(r"embedded Redis at (redis://\S+);").group(1)
        client = await WsClient.connect(port)
        await client.send({"action": "ping"})
        await client.wait_for(lambda m: m["type"] == "pong")

        Emitter(redis_url).emit(task_events.task_started("t-embedded", "EMB-1"))
        event = await client.wait_for(lambda m: m["type"] == "task_started")
        assert event["data"] == {"task_id": "t-embedded", "avid": "EMB-1", "status": "started"}
        assert "id" in event

        await client.send({"action": "get_queue_status"})
        status = await client.wait_for(lambda m: m["type"] == "queue_status")
        assert status["data"]["stale"] is True and status["data"]["active_tasks"] == []

        try:
            await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/api/tasks/queue/status")
            raise AssertionError("expected 503 without any worker")
        except HTTPClientError as exc:
            body = json.loads(exc.response.body)
            assert exc.code == 503 and body["code"] == 503
            assert body["data"] is None
            assert body["message"] in ("no inspect poll has completed yet",
                                       "no Celery worker answered the inspect poll")
        client.close()
    finally:
        assert child.stop() == 0
