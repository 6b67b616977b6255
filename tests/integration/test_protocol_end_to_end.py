"""The seed's protocol end to end: real redis-server, Celery worker and server."""

import json
import time
import uuid

from tornado.httpclient import AsyncHTTPClient

from notify_server.protocol import task_events
from notify_server.worker.emitter import Emitter
from tests.support.client import WsClient, of_task, queue_status_where
from tests.support.tasks import submit, unique_avid

async def receive_a_marker(client: WsClient, redis_url: str, avid: str) -> None:
    """Emit a marker event the way a worker does and wait until `client` has it.

    The server relays events in stream order, so every event written before
    the marker has reached the client by then: an absence checked afterwards
    is not merely lateness. `avid` lets the marker pass a subscription.
    """
    marker_id = f"marker-{uuid.uuid4().hex[:8]}"
    Emitter(redis_url).emit(task_events.task_progress(marker_id, avid, 1, 1, "marker"))
    await client.wait_for(of_task(marker_id, "task_progress"))


SEED_KEYS = {
    "task_started": ["task_id", "avid", "status"],
    "task_completed": ["task_id", "avid", "status", "message"],
    "task_failed": ["task_id", "avid", "status", "message"],
}


async def test_successful_task_gives_started_then_completed_with_seed_keys(server_port, producer):
    client = await WsClient.connect(server_port)
    avid = unique_avid("OK")
    task_id = submit(producer, avid, seconds=0.3)

    started = await client.wait_for(of_task(task_id, "task_started"))
    completed = await client.wait_for(of_task(task_id, "task_completed"))

    assert list(started["data"])[:3] == SEED_KEYS["task_started"]
    assert started["data"] == {"task_id": task_id, "avid": avid, "status": "started"}
    assert list(completed["data"])[:4] == SEED_KEYS["task_completed"]
    assert completed["data"]["status"] == "success"
    assert completed["data"]["avid"] == avid
    assert completed["data"]["message"] == f"{avid} downloaded"
    order = [m["type"] for m in client.received if m.get("data", {}).get("task_id") == task_id]
    assert order.index("task_started") < order.index("task_completed")
    client.close()


async def test_failing_task_gives_task_failed_with_reason(server_port, producer, redis_server):
    client = await WsClient.connect(server_port)
    avid = unique_avid("BAD")
    task_id = submit(producer, avid, seconds=0.2, fail=True)

    failed = await client.wait_for(of_task(task_id, "task_failed"))
    # A completion the worker wrongly sent after the failure would now be in.
    await receive_a_marker(client, redis_server.url, avid)

    assert failed["data"]["status"] == "failed"
    assert failed["data"]["avid"] == avid
    assert "RuntimeError" in failed["data"]["message"]
    assert f"download of {avid} failed" in failed["data"]["message"]
    outcome = [m["type"] for m in client.received
               if of_task(task_id)(m) and m["type"] != "task_progress"]
    assert outcome == ["task_started", "task_failed"]
    client.close()


async def test_progress_events_report_percent(server_port, producer):
    client = await WsClient.connect(server_port)
    task_id = submit(producer, unique_avid("PRG"), seconds=0.5)

    await client.wait_for(of_task(task_id, "task_completed"))

    percents = [m["data"]["percent"] for m in client.received if of_task(task_id, "task_progress")(m)]
    assert percents == sorted(percents) and percents[-1] == 100.0 and len(percents) == 10
    client.close()


async def test_running_task_appears_in_active_tasks_with_worker_and_epoch_time_start(
        server_port, producer, worker):
    client = await WsClient.connect(server_port)
    avid = unique_avid("RUN")
    before = time.time()
    task_id = submit(producer, avid, seconds=4.0)

    status = await client.wait_for(queue_status_where(
        lambda d: any(t["task_id"] == task_id for t in d["active_tasks"])))

    entry = next(t for t in status["data"]["active_tasks"] if t["task_id"] == task_id)
    assert set(entry) == {"task_id", "avid", "worker", "time_start"}
    assert entry["avid"] == avid
    assert entry["worker"].startswith("test-")
    assert before - 1 <= entry["time_start"] <= time.time()
    assert entry["worker"] in status["data"]["workers"]
    await client.wait_for(queue_status_where(
        lambda d: all(t["task_id"] != task_id for t in d["active_tasks"])))
    client.close()


async def test_countdown_task_appears_in_scheduled_tasks(server_port, producer):
    client = await WsClient.connect(server_port)
    avid = unique_avid("ETA")
    task_id = submit(producer, avid, seconds=0.1, countdown=3)

    status = await client.wait_for(queue_status_where(
        lambda d: any(t["task_id"] == task_id for t in d["scheduled_tasks"])))

    entry = next(t for t in status["data"]["scheduled_tasks"] if t["task_id"] == task_id)
    assert entry["avid"] == avid and entry["worker"].startswith("test-")
    assert isinstance(entry["eta"], str)
    # A poll that began while the task waited for its ETA can end after it
    # ran, so task_completed may have been read before that snapshot.
    await client.seen_or_wait_for(of_task(task_id, "task_completed"))
    client.close()


async def test_get_queue_status_is_answered_with_the_snapshot(server_port):
    client = await WsClient.connect(server_port)
    await client.send({"action": "get_queue_status"})

    reply = await client.wait_for(lambda m: m["type"] == "queue_status")

    assert {"active_tasks", "scheduled_tasks", "reserved_tasks"} <= set(reply["data"])
    assert reply["data"]["stale"] is False
    client.close()


async def test_rest_returns_the_seed_envelope(server_port):
    response = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{server_port}/api/tasks/queue/status")

    body = json.loads(response.body)
    assert response.code == 200
    assert body["code"] == 200 and body["message"] == "success"
    assert {"active_tasks", "scheduled_tasks", "reserved_tasks"} <= set(body["data"])


async def test_two_clients_both_receive_every_event(server_port, producer):
    first, second = await WsClient.connect(server_port), await WsClient.connect(server_port)
    task_ids = [submit(producer, unique_avid("TWO"), seconds=0.1) for _ in range(3)]

    for client in (first, second):
        await client.wait_for(lambda _: set(task_ids) <= {
            m["data"]["task_id"] for m in client.received if m["type"] == "task_completed"})

    for client in (first, second):
        seen = [(m["type"], m["data"]["task_id"]) for m in client.received
                if m.get("data", {}).get("task_id") in task_ids and m["type"] != "task_progress"]
        assert sorted(seen) == sorted([(kind, task_id) for task_id in task_ids
                                       for kind in ("task_started", "task_completed")])
        client.close()


async def test_bad_frames_get_error_replies_and_the_connection_survives(server_port):
    client = await WsClient.connect(server_port)
    cases = [
        ("not json", "invalid_json"),
        ("[1, 2]", "not_an_object"),
        ('{"hello": 1}', "missing_action"),
        ('{"action": "launch_rockets"}', "unknown_action"),
        ('{"action": "subscribe", "task_ids": "abc"}', "invalid_argument"),
        ('{"action": "resume", "last_event_id": "yesterday"}', "invalid_argument"),
        (b"\x00\x01binary", "binary_not_supported"),
    ]
    for frame, code in cases:
        await client.send(frame)
        reply = await client.wait_for(lambda m: m["type"] == "error")
        assert reply["data"]["code"] == code, frame
        assert reply["data"]["message"]

    await client.send({"action": "ping"})
    pong = await client.wait_for(lambda m: m["type"] in ("pong", "error"))
    assert pong["type"] == "pong"
    client.close()


async def test_subscribe_narrows_task_events_to_the_named_tasks(server_port, producer,
                                                                 redis_server):
    client = await WsClient.connect(server_port)
    witness = await WsClient.connect(server_port)  # not subscribed: sees every event
    wanted, other = unique_avid("WANT"), unique_avid("SKIP")
    await client.send({"action": "subscribe", "avids": [wanted]})
    await client.send({"action": "ping"})
    await client.wait_for(lambda m: m["type"] == "pong")

    other_id = submit(producer, other, seconds=0.1)
    wanted_id = submit(producer, wanted, seconds=0.3)
    await client.wait_for(of_task(wanted_id, "task_completed"))
    # Every event of the other task has been relayed (its last one reached the
    # witness), and the marker, written after, has reached the subscriber.
    await witness.wait_for(of_task(other_id, "task_completed"))
    await receive_a_marker(client, redis_server.url, wanted)

    assert any(of_task(wanted_id, "task_started")(m) for m in client.received)
    assert not any(of_task(other_id)(m) for m in client.received)
    client.close()
    witness.close()
