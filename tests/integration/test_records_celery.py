"""Task records written by real Celery workers: by the worker hook
(`install(app)`, tests/support/hooked_app.py) and by the Celery event bridge
(a plain `-E` worker, tests/support/plain_app.py, and a server with
NOTIFY_CELERY_EVENTS=1). Each record is read as a client reads it, over REST
and with the socket's `get_task`, and held against the history stream.
"""

import asyncio
import threading
import time
import uuid

import pytest
import redis
from celery import Celery

from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.protocol import task_events as events
from notify_server.worker.emitter import Emitter
from tests.support.client import WsClient, of_task
from tests.support.http_probe import readyz
from tests.support.processes import start_server, start_worker
from tests.support.records import (FINAL_TYPES, history_of, rest_record, socket_record,
                                   stream_key)
from tests.support.tasks import unique_avid
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def hooked():
    """(redis url, server port, producer, worker hostname): the hook's stack."""
    redis_server = EmbeddedRedis()
    redis_server.start()
    hostname = f"hooked-{uuid.uuid4().hex[:6]}@localhost"
    worker = start_worker(redis_server.url, hostname, app="tests.support.hooked_app")
    server, port = start_server(redis_server.url, name="records-hook")
    producer = Celery("records-producer", broker=redis_server.url, set_as_current=False)
    yield redis_server.url, port, producer, hostname
    producer.close()
    server.stop()
    worker.stop()
    redis_server.stop()


@pytest.fixture(scope="module")
def bridged():
    """(redis url, server port, producer, worker hostname): the bridge's stack."""
    redis_server = EmbeddedRedis()
    redis_server.start()
    hostname = f"plain-{uuid.uuid4().hex[:6]}@localhost"
    worker = start_worker(redis_server.url, hostname, app="tests.support.plain_app",
                          args=["-E"], env={"PLAIN_BROKER_URL": redis_server.url})
    server, port = start_server(redis_server.url, name="records-bridge",
                                env={"NOTIFY_CELERY_EVENTS": "1"})
    producer = Celery("records-bridge-producer", broker=redis_server.url, set_as_current=False)
    yield redis_server.url, port, producer, hostname
    producer.close()
    server.stop()
    worker.stop()
    redis_server.stop()


def revoke_then_send(producer: Celery, name: str, *args) -> str:
    """A task revoked by id before it is sent: the worker drops it on arrival."""
    task_id = str(uuid.uuid4())
    replies = producer.control.revoke(task_id, reply=True, timeout=10, limit=1)
    assert replies, "no worker acknowledged the revoke"
    producer.send_task(name, args=list(args), task_id=task_id)
    return task_id


async def finished(client: WsClient, task_id: str, final: str = None) -> dict:
    """The final event of `task_id` (of type `final` if given), received
    already or from now on."""
    def wanted(m):
        return of_task(task_id)(m) and (m["type"] == final if final else m["type"] in FINAL_TYPES)
    return next((m for m in client.received if wanted(m)), None) \
        or await client.wait_for(wanted, timeout=40)


async def both_views(port: int, client: WsClient, task_id: str) -> dict:
    """The record over REST, checked equal to the socket's `get_task` reply."""
    status, body = await rest_record(port, task_id)
    assert (status, body["code"], body["message"]) == (200, 200, "success"), body
    reply = await socket_record(client, task_id)
    assert reply == {"type": "task", "data": body["data"]}
    return body["data"]


def check_record(record: dict, history: list, *, task_id, avid, name, worker, status, message,
                 retries, types, progress=None, bridge=False) -> None:
    """Everything a record says, against what the task did and the history."""
    assert record["task_id"] == task_id
    assert (record["avid"], record["name"], record["worker"]) == (avid, name, worker)
    assert (record["status"], record["message"], record["retries"]) == (status, message, retries)
    assert record["progress"] == progress
    timeline = record["events"]
    kinds = [event["type"] for event in timeline]
    if bridge and retries:
        # Celery sends a retry's task-received (the next attempt) and the
        # task-retried of the attempt that raised from two places: either may come first.
        assert kinds[0] == "task_received" and kinds.count("task_received") == retries + 1
        assert [k for k in kinds if k != "task_received"] == [
            k for k in types if k != "task_received"]
    else:
        assert kinds == types
    assert [(event["id"], event["type"]) for event in timeline] == history
    assert record["last_id"] == timeline[-1]["id"]
    assert record["events_dropped"] == 0
    times = [event["time"] for event in timeline]
    if not bridge:  # the hook's times are one process's clock, in writing order
        assert times == sorted(times)
    received = [event["time"] for event in timeline if event["type"] == "task_received"]
    assert record["received_at"] == (received[0] if received else None)
    started = [event["time"] for event in timeline if event["type"] == "task_started"]
    assert record["started_at"] == (started[-1] if started else None)
    final = [event["time"] for event in timeline if event["type"] in FINAL_TYPES]
    assert record["finished_at"] == final[-1]
    if started:
        assert record["received_at"] is None or record["received_at"] <= record["started_at"]
        assert record["started_at"] <= record["finished_at"]
        assert 0 <= record["runtime"] < 30
        if not bridge:  # the hook's runtime is the record's own started..finished
            assert record["runtime"] == pytest.approx(
                record["finished_at"] - record["started_at"], abs=1e-5)
    else:
        assert record["runtime"] is None


async def test_the_hooks_records_show_success_failure_retries_progress_and_revoke(hooked):
    url, port, producer, hostname = hooked
    client = await WsClient.connect(port)
    await client.wait_for(lambda m: m["type"] == "queue_status")
    avids = {kind: unique_avid(kind.upper()) for kind in ("ok", "bad", "flaky", "steps", "rev")}
    ids = {kind: producer.send_task(f"hooked.{task}", args=[avids[kind]]).id
           for kind, task in (("ok", "succeed"), ("bad", "fail"), ("flaky", "flaky"),
                              ("steps", "steps"))}
    ids["rev"] = revoke_then_send(producer, "hooked.succeed", avids["rev"])
    for kind, final in (("ok", "task_completed"), ("bad", "task_failed"),
                        ("flaky", "task_completed"), ("steps", "task_completed"),
                        ("rev", "task_revoked")):
        await finished(client, ids[kind], final)

    def check(kind, **expected):
        check_record(records[kind], history_of(url, ids[kind]), task_id=ids[kind],
                     avid=avids[kind], worker=hostname, **expected)

    records = {kind: await both_views(port, client, task_id) for kind, task_id in ids.items()}
    check("ok", name="hooked.succeed", status="success", message=f"done {avids['ok']}",
          retries=0, types=["task_started", "task_completed"])
    check("bad", name="hooked.fail", status="failed",
          message=f"ValueError: cannot do {avids['bad']}", retries=0,
          types=["task_started", "task_failed"])
    check("flaky", name="hooked.flaky", status="success",
          message=f"done {avids['flaky']} after 2 retries", retries=2,
          types=["task_started", "task_retrying"] * 2 + ["task_started", "task_completed"])
    check("steps", name="hooked.steps", status="success", message=f"stepped {avids['steps']}",
          retries=0, types=["task_started"] + ["task_progress"] * 3 + ["task_completed"],
          progress={"current": 3, "total": 3, "percent": 100.0,
                    "message": f"step 3 of {avids['steps']}"})
    check("rev", name="hooked.succeed", status="revoked", message="revoked", retries=0,
          types=["task_revoked"])
    client.close()


async def test_a_retry_overtaken_by_its_next_attempt_keeps_its_events_in_order(hooked):
    """Celery sends a retry's next attempt before its `task_retry` signal; here
    the next attempt starts (in the other pool process) and writes its
    `task_started` before that signal. The hook writes `task_retrying` before
    the retry is sent, so a client still sees the attempts in order."""
    url, port, producer, hostname = hooked
    client = await WsClient.connect(port)
    await client.wait_for(lambda m: m["type"] == "queue_status")
    avid = unique_avid("OVERTAKEN")
    task_id = producer.send_task("hooked.overtaken", args=[avid]).id
    await finished(client, task_id, "task_completed")
    live = [m["type"] for m in client.received if of_task(task_id)(m)]
    assert live == ["task_started", "task_retrying", "task_started", "task_completed"]
    retrying = next(m for m in client.received
                    if of_task(task_id)(m) and m["type"] == "task_retrying")
    assert retrying["data"]["message"] == (
        f"Retry in 0s: RuntimeError('first attempt of {avid}')")
    check_record(await both_views(port, client, task_id), history_of(url, task_id),
                 task_id=task_id, avid=avid, worker=hostname, name="hooked.overtaken",
                 status="success", message=f"done {avid}", retries=1,
                 types=["task_started", "task_retrying", "task_started", "task_completed"])
    client.close()


async def test_the_bridges_records_show_success_failure_retries_progress_and_revoke(bridged):
    url, port, producer, hostname = bridged
    # The bridge writes once its server holds the lease and its helper consumes
    # Celery's events: tasks sent before would not be bridged.
    await eventually(lambda: readyz(port), lambda answer: answer[1]["leader"] is not None
                     and answer[1]["celery_events"] is True)
    client = await WsClient.connect(port)
    await client.wait_for(lambda m: m["type"] == "queue_status")
    avids = {kind: unique_avid(kind.upper()) for kind in ("ok", "bad", "flaky", "steps", "rev")}
    ids = {
        "ok": producer.send_task("plain.fetch", args=[avids["ok"]]).id,
        "bad": producer.send_task("plain.fetch", args=[avids["bad"]], kwargs={"fail": True}).id,
        "flaky": producer.send_task("plain.flaky", args=[avids["flaky"]]).id,
        "steps": producer.send_task("plain.fetch", args=[avids["steps"]],
                                    kwargs={"steps": 3, "seconds": 0.3}).id,
        "rev": revoke_then_send(producer, "plain.fetch", avids["rev"]),
    }
    for kind, final in (("ok", "task_completed"), ("bad", "task_failed"),
                        ("flaky", "task_completed"), ("steps", "task_completed"),
                        ("rev", "task_revoked")):
        await finished(client, ids[kind], final)

    def check(kind, **expected):
        check_record(records[kind], history_of(url, ids[kind]), task_id=ids[kind],
                     worker=hostname, bridge=True, **{"avid": avids[kind], **expected})

    records = {kind: await both_views(port, client, task_id) for kind, task_id in ids.items()}
    check("ok", name="plain.fetch", status="success", message=repr(f"fetched {avids['ok']}"),
          retries=0, types=["task_received", "task_started", "task_completed"])
    check("bad", name="plain.fetch", status="failed",
          message=f"ValueError('cannot fetch {avids['bad']}')", retries=0,
          types=["task_received", "task_started", "task_failed"])
    check("flaky", name="plain.flaky", status="success",
          message=repr(f"done {avids['flaky']} after 2 retries"), retries=2,
          types=["task_received", "task_started", "task_retrying"] * 2
          + ["task_received", "task_started", "task_completed"])
    check("steps", name="plain.fetch", status="success",
          message=repr(f"fetched {avids['steps']}"), retries=0,
          types=["task_received", "task_started"] + ["task_progress"] * 3 + ["task_completed"],
          progress={"current": 3, "total": 3, "percent": 100.0, "message": "step 3"})
    # Revoked before Celery sent task-received: the bridge never saw its
    # arguments or name, so (as documented) the subject and name are unknown.
    check("rev", avid=None, name=None, status="revoked", message="revoked", retries=0,
          types=["task_revoked"])
    flaky_received = [e["time"] for e in records["flaky"]["events"]
                      if e["type"] == "task_received"]
    assert records["flaky"]["received_at"] == flaky_received[0] < flaky_received[-1]
    client.close()


# -- subscribe: a task's record first, then only the events after it -----------------


async def quiet_client(port: int) -> WsClient:
    """A socket whose filter lets nothing through yet (its pong proves it applies)."""
    client = await WsClient.connect(port)
    await client.wait_for(lambda m: m["type"] == "queue_status")
    await client.send({"action": "subscribe", "avids": [f"quiet-{uuid.uuid4().hex}"]})
    await client.send({"action": "ping"})
    await client.wait_for(lambda m: m["type"] == "pong")
    return client


async def subscribe_and_ping(client: WsClient, *task_ids: str) -> int:
    """Subscribe to `task_ids`, then ping; returns where the answers start in `received`."""
    start = len(client.received)
    await client.send({"action": "subscribe", "task_ids": list(task_ids)})
    await client.send({"action": "ping"})
    return start


async def after_a_marker(client: WsClient, url: str, marker: str) -> None:
    """Emit an event of `marker` (subscribed too) and wait for it: everything
    of the task written before it has reached the client by then."""
    Emitter(url).emit(events.task_progress(marker, None, 1, 1, "marker"))
    await client.wait_for(of_task(marker, "task_progress"))


def check_record_then_events(client: WsClient, start: int, url: str, task_id: str,
                             record_expected: bool = True) -> dict:
    """What `client` got for `task_id` from `start` on: its record (if one
    existed) before any of its events and before the pong, then exactly the
    history's events after the record's last_id, each once, in order."""
    answers = client.received[start:]
    pong = next(index for index, m in enumerate(answers) if m["type"] == "pong")
    mine = [(index, m) for index, m in enumerate(answers) if m.get("data", {}).get("task_id")
            == task_id]
    history = history_of(url, task_id)
    if not record_expected and (not mine or mine[0][1]["type"] != "task"):
        assert [m["id"] for _, m in mine] == [event_id for event_id, _ in history]
        return {}
    (record_at, first), events_after = mine[0], [m for _, m in mine[1:]]
    assert first["type"] == "task", answers
    assert record_at < pong
    record = first["data"]
    floor = stream_key(record["last_id"])
    assert [e["id"] for e in record["events"]] == [
        event_id for event_id, _ in history if stream_key(event_id) <= floor]
    assert all(m["type"] != "task" for m in events_after), events_after
    assert [(m["id"], m["type"]) for m in events_after] == [
        (event_id, kind) for event_id, kind in history if stream_key(event_id) > floor]
    return record


async def test_subscribing_after_a_task_finished_gets_only_its_record_before_the_pong(hooked):
    url, port, producer, _ = hooked
    watcher = await WsClient.connect(port)
    for _ in range(5):   # real Celery tasks
        task_id = producer.send_task("hooked.succeed", args=[unique_avid("DONE")]).id
        await finished(watcher, task_id, "task_completed")
        client = await quiet_client(port)
        start = await subscribe_and_ping(client, task_id)
        await client.wait_for(lambda m: m["type"] == "pong")
        assert [m["type"] for m in client.received[start:]] == ["task", "pong"]
        record = client.received[start]["data"]
        assert (record["task_id"], record["status"]) == (task_id, "success")
        client.close()
    emitter = Emitter(url)
    for round_number in range(30):   # the same through the emitter, outcomes varied
        task_id = f"done-{round_number}-{uuid.uuid4().hex[:6]}"
        emitter.emit(events.task_started(task_id, "D"))
        final = (events.task_completed(task_id, "D", "ok") if round_number % 3
                 else events.task_failed(task_id, "D", "E: no"))
        emitter.emit(final)
        await finished(watcher, task_id)
        client = await quiet_client(port)
        start = await subscribe_and_ping(client, task_id, "not-a-task-" + task_id)
        await client.wait_for(lambda m: m["type"] == "pong")
        marker = f"marker-{uuid.uuid4().hex[:6]}"
        await subscribe_and_ping(client, task_id, marker)
        # The pong first: a marker written before the subscribe is applied
        # would come as the marker's record, not as its event.
        await client.wait_for(lambda m: m["type"] == "pong")
        await after_a_marker(client, url, marker)
        answers = [m for m in client.received[start:] if m.get("data", {}).get("task_id")
                   == task_id]
        assert [m["type"] for m in answers] == ["task", "task"]  # one per subscribe, no event
        assert answers[0]["data"]["status"] == ("success" if round_number % 3 else "failed")
        client.close()
    watcher.close()


async def test_subscribing_while_a_celery_task_runs_gets_its_record_then_the_later_events(
        hooked):
    url, port, producer, _ = hooked
    watcher = await WsClient.connect(port)
    client_redis = redis.Redis.from_url(url)
    try:
        for round_number in range(6):
            key = f"gate:{uuid.uuid4().hex}"
            task_id = producer.send_task("hooked.gate", args=[unique_avid("GATE"), key]).id
            await watcher.wait_for(of_task(task_id, "task_started"))
            client = await quiet_client(port)
            marker = f"marker-{uuid.uuid4().hex[:6]}"
            when = round_number % 3   # open the gate before, during or after the subscribe
            if when == 0:
                client_redis.set(key, 1)
            start = await subscribe_and_ping(client, task_id, marker)
            if when == 1:
                client_redis.set(key, 1)
            await client.wait_for(lambda m: m["type"] == "pong")
            if when == 2:
                client_redis.set(key, 1)
            await finished(watcher, task_id, "task_completed")
            await after_a_marker(client, url, marker)
            record = check_record_then_events(client, start, url, task_id)
            if when == 2:
                assert record["status"] == "started" and record["finished_at"] is None
            client.close()
    finally:
        client_redis.close()
        watcher.close()


async def test_subscribing_at_any_point_of_a_fast_stream_neither_repeats_nor_loses_an_event(
        hooked):
    url, port, _, _ = hooked
    watcher = await WsClient.connect(port)
    steps = 20
    for round_number in range(30):
        task_id = f"stream-{round_number}-{uuid.uuid4().hex[:6]}"
        client = await quiet_client(port)

        def publish():
            emitter = Emitter(url)
            emitter.emit(events.task_started(task_id, "S"))
            for step in range(1, steps + 1):
                emitter.emit(events.task_progress(task_id, "S", step, steps, ""))
                time.sleep(0.002)   # pacing the writer so the subscribe lands mid-stream
            emitter.emit(events.task_completed(task_id, "S", "ok"))
            assert emitter.flush()  # written before the marker that follows

        writer = threading.Thread(target=publish, daemon=True)
        writer.start()
        # Subscribe after the watcher saw the k-th event: k from 1 (started) to the end.
        seen = round_number % (steps + 2) + 1
        await watcher.wait_for(lambda m, count=[0]: of_task(task_id)(m)
                               and (count.__setitem__(0, count[0] + 1) or count[0] == seen))
        marker = f"marker-{uuid.uuid4().hex[:6]}"
        start = await subscribe_and_ping(client, task_id, marker)
        # The pong first: a live event of the marker may come before it
        # (events flow again once the records are sent, before the ping is read).
        await client.wait_for(lambda m: m["type"] == "pong")
        await asyncio.get_running_loop().run_in_executor(None, writer.join, 10)
        assert not writer.is_alive()
        await after_a_marker(client, url, marker)
        check_record_then_events(client, start, url, task_id)
        client.close()
    watcher.close()
