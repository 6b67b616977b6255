"""The Celery event bridge against a plain Celery app: no hook, no notify_server import.

A private redis-server (broker, events and history), a worker of
`tests/support/plain_app.py` started with `-E`, and `run.py --celery-events`.
Everything a client gets here came from Celery's own event stream.
"""

import asyncio
import collections
import json
import signal
import time
import uuid
from typing import Optional

import pytest
import redis
from celery import Celery

from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.protocol import task_events as events
from notify_server.protocol.names import Keys
from tests.support.written_emitter import WrittenEmitter
from tests.support.client import WsClient, of_task
from tests.support.http_probe import readyz, scrape, wait_for_bridge
from tests.support.processes import ARTIFACTS, start_server, start_worker
from tests.support.tasks import submit, unique_avid
from tests.support.tokens import SECRET, sign
from tests.support.waiting import eventually

PLAIN_APP = "tests.support.plain_app"
HISTORY = Keys().history_stream


@pytest.fixture(scope="module")
def broker():
    server = EmbeddedRedis()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def plain_worker(broker):
    child = start_worker(broker.url, f"plain-{uuid.uuid4().hex[:6]}@localhost",
                         app=PLAIN_APP, args=["-E"], env={"PLAIN_BROKER_URL": broker.url})
    yield child
    child.stop()


@pytest.fixture(scope="module")
def bridge_server(broker, plain_worker):
    child, port = start_server(broker.url, "--celery-events")
    wait_for_bridge(port)
    yield child, port
    child.stop()


@pytest.fixture(scope="module")
def producer(broker):
    app = Celery("plain-producer", broker=broker.url, set_as_current=False)
    yield app
    app.close()


def fetch(producer, *args, **kwargs) -> str:
    return producer.send_task("plain.fetch", args=list(args), kwargs=kwargs).id


async def test_the_seed_messages_reach_a_client_from_celery_events_alone(bridge_server,
                                                                        producer):
    _, port = bridge_server
    client = await WsClient.connect(port)
    await client.wait_for(lambda m: m["type"] == "queue_status")
    positional, keyword, failing = unique_avid("P"), unique_avid("K"), unique_avid("F")
    first = fetch(producer, positional)
    second = fetch(producer, avid=keyword)
    third = fetch(producer, failing, fail=True)

    received = await seen_or_next(client, of_task(first, "task_received"))
    started = await seen_or_next(client, of_task(first, "task_started"))
    completed = await seen_or_next(client, of_task(first, "task_completed"))
    assert received["data"]["avid"] == positional
    assert received["data"]["worker"].startswith("plain-")
    assert started["data"] == {"task_id": first, "avid": positional, "status": "started"}
    assert completed["data"]["avid"] == positional
    assert completed["data"]["message"] == repr(f"fetched {positional}")
    assert all("id" in message for message in (received, started, completed))

    keyword_done = await seen_or_next(client, of_task(second, "task_completed"))
    assert keyword_done["data"]["avid"] == keyword

    failed = await seen_or_next(client, of_task(third, "task_failed"))
    assert failed["data"]["avid"] == failing
    assert failed["data"]["status"] == "failed"
    assert "ValueError" in failed["data"]["message"]
    assert f"cannot fetch {failing}" in failed["data"]["message"]
    client.close()


async def test_send_event_task_progress_becomes_task_progress(bridge_server, producer):
    _, port = bridge_server
    client = await WsClient.connect(port)
    avid = unique_avid("G")
    task_id = fetch(producer, avid, steps=4, seconds=0.2)

    await client.wait_for(of_task(task_id, "task_completed"))
    progress = [m["data"] for m in client.received
                if m["type"] == "task_progress" and m["data"]["task_id"] == task_id]
    assert [(p["current"], p["total"], p["percent"]) for p in progress] == [
        (1, 4, 25.0), (2, 4, 50.0), (3, 4, 75.0), (4, 4, 100.0)]
    assert {p["avid"] for p in progress} == {avid}
    assert progress[0]["message"] == "step 1"
    client.close()


async def test_workers_online_and_offline_follow_start_shutdown_and_kill(broker, bridge_server):
    _, port = bridge_server
    client = await WsClient.connect(port)
    await client.wait_for(lambda m: m["type"] == "queue_status")
    env = {"PLAIN_BROKER_URL": broker.url}

    calm_name = f"calm-{uuid.uuid4().hex[:6]}@localhost"
    calm = start_worker(broker.url, calm_name, app=PLAIN_APP, args=["-E"], env=env)
    online = await client.wait_for(lambda m: m["type"] == "worker_online"
                                   and m["data"]["worker"] == calm_name)
    assert isinstance(online["data"]["time"], float) and "id" in online
    listed = await client.wait_for(lambda m: m["type"] == "queue_status"
                                   and calm_name in m["data"]["workers"])
    state = {s["name"]: s for s in listed["data"]["worker_states"]}[calm_name]
    assert state["online"] is True and isinstance(state["last_heartbeat"], float)

    calm.stop()   # warm shutdown: the worker says goodbye
    offline = await client.wait_for(lambda m: m["type"] == "worker_offline"
                                    and m["data"]["worker"] == calm_name)
    assert offline["data"]["reason"] == "shutdown"
    # The table reaches the server straight from the bridge, the event through
    # Redis: the queue_status may come first.
    gone = await seen_or_next(client, lambda m: m["type"] == "queue_status"
                              and calm_name not in m["data"]["workers"], after=listed)
    state = {s["name"]: s for s in gone["data"]["worker_states"]}[calm_name]
    assert state["online"] is False

    doomed_name = f"doomed-{uuid.uuid4().hex[:6]}@localhost"
    doomed = start_worker(broker.url, doomed_name, app=PLAIN_APP, args=["-E"], env=env)
    await client.wait_for(lambda m: m["type"] == "worker_online"
                          and m["data"]["worker"] == doomed_name)
    killed_at = time.monotonic()
    doomed.signal(signal.SIGKILL)  # no goodbye: only its heartbeats stop
    # Celery's expiry: two heartbeat intervals (2 s each) after the last one arrived.
    offline = await client.wait_for(lambda m: m["type"] == "worker_offline"
                                    and m["data"]["worker"] == doomed_name, timeout=15)
    assert offline["data"]["reason"] == "heartbeats stopped"
    figure = (f"worker_offline {time.monotonic() - killed_at:.1f} s after kill -9 of the "
              "worker (heartbeat interval 2 s, expiry 2 intervals)\n")
    print(figure, end="")
    ARTIFACTS.mkdir(exist_ok=True)
    with open(ARTIFACTS / "bridge-worker-offline.txt", "a") as figures:
        figures.write(figure)
    doomed.stop()
    client.close()


async def test_resume_after_a_server_restart_replays_bridged_events(broker, plain_worker,
                                                                   producer):
    child, port = start_server(broker.url, "--celery-events", name="restarted")
    try:
        client = await WsClient.connect(port)
        first = fetch(producer, unique_avid("R"))
        last_seen = (await client.wait_for(of_task(first, "task_completed")))["id"]
        client.close()

        # While the client is away, the bridge writes another task's events...
        away_avid = unique_avid("A")
        away = fetch(producer, away_avid)
        r = redis.Redis.from_url(broker.url)
        await _await_in_history(r, away, "task_completed")
        # ...then the server restarts.
        child.stop()
        child, port = start_server(broker.url, "--celery-events", name="restarted")

        client = await WsClient.connect(port, f"last_event_id={last_seen}")
        replayed = [await client.wait_for(of_task(away, kind))
                    for kind in ("task_received", "task_started", "task_completed")]
        assert [m["data"]["avid"] for m in replayed] == [away_avid] * 3
        status = await client.wait_for(lambda m: m["type"] in ("queue_status", "resync"))
        assert status["type"] == "queue_status"
        client.close()
    finally:
        child.stop()


async def seen_or_next(client: WsClient, predicate, after: Optional[dict] = None,
                       timeout: float = 20.0) -> dict:
    """The first message received so far (after the message `after`), or
    from now on, that satisfies `predicate`."""
    start = 0 if after is None else next(
        index for index, message in enumerate(client.received) if message is after) + 1
    for message in client.received[start:]:
        if predicate(message):
            return message
    return await client.wait_for(predicate, timeout)


async def _await_in_history(client: redis.Redis, task_id: str, kind: str) -> None:
    for _ in range(400):
        entries = client.xrange(HISTORY)
        if any(task_id.encode() in fields[b"event"] and kind.encode() in fields[b"event"]
               for _, fields in entries):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{kind} of {task_id} never reached the history")


async def test_enable_events_turns_on_task_events_of_a_worker_started_without_e(make_redis):
    broker = make_redis()
    hostname = f"quiet-{uuid.uuid4().hex[:6]}@localhost"
    worker = start_worker(broker.url, hostname, app=PLAIN_APP,
                          env={"PLAIN_BROKER_URL": broker.url})
    child, port = start_server(broker.url, env={"NOTIFY_ENABLE_EVENTS": "1"}, name="enabling")
    producer = Celery("enabling-producer", broker=broker.url, set_as_current=False)
    try:
        assert "task events: OFF" in "".join(worker.output)
        worker.wait_for_line(r"Events of group \{task\} enabled by remote")
        client = await WsClient.connect(port)
        avid = unique_avid("E")
        task_id = fetch(producer, avid)
        started = await client.wait_for(of_task(task_id, "task_started"))
        completed = await client.wait_for(of_task(task_id, "task_completed"))
        assert started["data"]["avid"] == completed["data"]["avid"] == avid
        client.close()
    finally:
        producer.close()
        child.stop()
        worker.stop()


async def test_with_the_hook_and_the_bridge_each_transition_reaches_clients_once(make_redis):
    broker = make_redis()
    worker = start_worker(broker.url, f"hooked-{uuid.uuid4().hex[:6]}@localhost", args=["-E"],
                          concurrency=3)
    child, port = start_server(broker.url, "--celery-events", name="hook-and-bridge")
    producer = Celery("hooked-producer", broker=broker.url, set_as_current=False)
    try:
        client = await WsClient.connect(port)
        tried_before = await bridge_tried(port)
        # Short tasks, many at once: the worker sends its task events as
        # `task.multi` lists and the bridge writes each read in one batch.
        tasks = [submit(producer, unique_avid("H"), seconds=0.02, fail=index % 5 == 0)
                 for index in range(90)]
        for task_id in tasks:
            await seen_or_next(client, lambda m, t=task_id: of_task(t)(m)
                               and m["type"] in ("task_completed", "task_failed"))
        # Only the bridge writes task_received, in the order Celery sent its
        # events: once the marker's is here, every earlier event was handled.
        marker = submit(producer, unique_avid("M"), seconds=0.05)
        await client.wait_for(of_task(marker, "task_received"))

        counts = collections.Counter((m["data"]["task_id"], m["type"]) for m in client.received
                                     if m.get("data", {}).get("task_id") in tasks
                                     and m["type"] in LIFECYCLE)
        for index, task_id in enumerate(tasks):
            final = "task_failed" if index % 5 == 0 else "task_completed"
            assert {kind: counts[(task_id, kind)] for kind in LIFECYCLE if counts[(task_id, kind)]} \
                == {"task_received": 1, "task_started": 1, final: 1}, task_id
        # Both wrote: the hook's progress is there, and the bridge tried every
        # transition too (written, or refused as the hook's), yet each came once.
        # Which writer came first varies by transition and run; the bridge
        # reports its counts with its worker table, every few seconds.
        assert any(m["type"] == "task_progress" for m in client.received)

        async def tried():
            return await bridge_tried(port) - tried_before
        await eventually(tried, lambda count: count >= 3 * len(tasks))
        client.close()
    finally:
        producer.close()
        child.stop()
        worker.stop()


LIFECYCLE = ("task_received", "task_started", "task_completed", "task_failed")


async def bridge_tried(port: int) -> float:
    """The bridge's writes so far, whether they landed or were refused as duplicates."""
    return await bridge_count(port, "written") + await bridge_count(port, "duplicates")


async def bridge_count(port: int, outcome: str) -> float:
    samples = await scrape(port)
    return samples.get(("notify_bridge_events_total", (("outcome", outcome),)), 0.0)


async def test_one_bridge_writes_and_a_new_leader_fills_in_what_the_dead_one_missed(make_redis):
    """Two servers bridge the same broker; the leader is killed (-9) in the
    middle of a burst of tasks. A client of the survivor gets every
    transition exactly once."""
    broker = make_redis()
    env = {"NOTIFY_LEADER_TTL": "1.0", "PLAIN_BROKER_URL": broker.url}
    worker = start_worker(broker.url, f"failover-{uuid.uuid4().hex[:6]}@localhost",
                          app=PLAIN_APP, args=["-E"], env=env)
    servers = [start_server(broker.url, "--celery-events", env=env, name=f"bridge-{index}")
               for index in range(2)]
    producer = Celery("failover-producer", broker=broker.url, set_as_current=False)
    try:
        bodies = [(await eventually(lambda port=port: readyz(port),
                                    lambda answer: answer[1]["leader"] is not None
                                    and answer[1]["celery_events"] is True))[1]
                  for _, port in servers]
        leader = next(index for index, body in enumerate(bodies)
                      if body["leader"] == body["instance"])
        (doomed, _), (_, survivor_port) = servers[leader], servers[1 - leader]
        client = await WsClient.connect(survivor_port)
        await client.wait_for(lambda m: m["type"] == "queue_status")

        # A burst: task events arrive as `task.multi` lists and are written in
        # batches; the leader dies with some of a batch written, some not.
        tasks = []
        for index in range(80):
            tasks.append(fetch(producer, unique_avid("L"), seconds=0.03))
            if index == 30:
                doomed.signal(signal.SIGKILL)
            await asyncio.sleep(0.02)  # pacing the producer, not waiting for an outcome
        for task_id in tasks:
            await seen_or_next(client, of_task(task_id, "task_completed"), timeout=30)
        marker = fetch(producer, unique_avid("M"))
        await client.wait_for(of_task(marker, "task_received"))

        counts = collections.Counter((m["data"]["task_id"], m["type"]) for m in client.received
                                     if m.get("data", {}).get("task_id") in tasks)
        for task_id in tasks:
            assert [counts[(task_id, kind)] for kind in
                    ("task_received", "task_started", "task_completed")] == [1, 1, 1], task_id
        client.close()
    finally:
        producer.close()
        for child, _ in servers:
            child.stop()
        worker.stop()


def test_the_emit_script_writes_a_transition_once_whoever_writes_it(broker):
    prefix = f"once-{uuid.uuid4().hex[:6]}"
    # Each emit is in Redis before the next (the emitters' writer threads would race).
    hook, bridge = (WrittenEmitter(broker.url, prefix=prefix) for _ in range(2))
    started = {"type": "task_started", "data": {"task_id": "t-1", "avid": "A",
                                                "status": "started"}}
    key = events.transition_key("t-1", events.TASK_STARTED, 0)

    hook.emit(started, once=key)
    bridge.emit(started, once=key)
    bridge.emit(started, once=events.transition_key("t-1", events.TASK_STARTED, 1))  # a retry
    hook.emit({"type": "task_progress", "data": {"task_id": "t-1"}})  # no key: always written

    entries = redis.Redis.from_url(broker.url).xrange(Keys(prefix).history_stream)
    assert [json.loads(fields[b"event"])["type"] for _, fields in entries] == [
        "task_started", "task_started", "task_progress"]
    assert (hook.written, hook.duplicates, bridge.written, bridge.duplicates) == (2, 0, 1, 1)


async def test_in_token_mode_bridged_task_events_reach_their_owner_and_worker_events_everyone(
        broker, plain_worker, bridge_server, producer):
    child, port = start_server(broker.url, "--celery-events", name="bridge-tokens",
                               env={"NOTIFY_AUTH_SECRET": SECRET})
    try:
        alice = await WsClient.connect(port, f"token={sign('alice')}")
        bob = await WsClient.connect(port, f"token={sign('bob')}")
        for client in (alice, bob):
            await client.wait_for(lambda m: m["type"] == "queue_status")
        bobs = fetch(producer, unique_avid("B"), user_id="bob")
        alices = fetch(producer, unique_avid("A"), user_id="alice")
        await alice.wait_for(of_task(alices, "task_completed"))
        await bob.wait_for(of_task(bobs, "task_completed"))

        # A worker event reaches every client, and marks the end: every event of
        # both tasks was written before it, so none can still be on its way.
        name = f"seen-{uuid.uuid4().hex[:6]}@localhost"
        extra = start_worker(broker.url, name, app=PLAIN_APP, args=["-E"],
                             env={"PLAIN_BROKER_URL": broker.url})
        for client in (alice, bob):
            await client.wait_for(lambda m: m["type"] == "worker_online"
                                  and m["data"]["worker"] == name)
        assert {m["data"]["task_id"] for m in alice.received if "task_id" in m["data"]} \
            == {alices}
        assert {m["data"]["task_id"] for m in bob.received if "task_id" in m["data"]} == {bobs}
        extra.stop()
        for client in (alice, bob):
            client.close()
    finally:
        child.stop()


BURST_TASKS = 6667  # three events each: 20,001 Celery events


def send_burst(broker_url: str, prefix: str) -> None:
    """Celery's own events for BURST_TASKS tasks, as fast as one process sends
    them, the way a worker with an event loop does (`task.multi` lists of up
    to 24), from three worker hostnames."""
    app = Celery("burst-source", broker=broker_url, set_as_current=False)
    with app.connection_for_write() as connection:
        dispatchers = [app.events.Dispatcher(connection, hostname=f"burst-{n}@localhost",
                                             buffer_group=["task"]) for n in range(3)]
        for n in range(BURST_TASKS):
            task_id, dispatcher = f"{prefix}-{n}", dispatchers[n % 3]
            dispatcher.send("task-received", uuid=task_id, name="plain.fetch",
                            args=f"['{prefix}-A-{n}']", kwargs=f"{{'user_id': 'u{n % 7}'}}",
                            retries=0)
            dispatcher.send("task-started", uuid=task_id)
            dispatcher.send("task-succeeded", uuid=task_id, result="'ok'", runtime=0.001)
        for dispatcher in dispatchers:
            dispatcher.flush()
            dispatcher.close()
    app.close()


async def test_a_burst_of_20000_bridged_events_reaches_a_client_each_once_in_order(make_redis):
    """20,001 Celery events sent as fast as a source can: a client gets every
    one exactly once, each task's in the order sent, with ids in stream order."""
    broker = make_redis()
    child, port = start_server(broker.url, "--celery-events", name="burst",
                               env={"NOTIFY_HISTORY_MAXLEN": "50000"})
    try:
        await eventually(lambda: readyz(port), lambda answer: answer[1]["leader"] is not None
                         and answer[1]["celery_events"] is True)
        client = await WsClient.connect(port)
        await client.wait_for(lambda m: m["type"] == "queue_status")
        prefix = f"burst{uuid.uuid4().hex[:6]}"
        sending = asyncio.ensure_future(asyncio.to_thread(send_burst, broker.url, prefix))
        steps = {"task_received": 0, "task_started": 1, "task_completed": 2}
        seen: "collections.Counter[tuple]" = collections.Counter()
        last_step, out_of_order, ids = {}, [], []
        while len(seen) < 3 * BURST_TASKS:
            message = await client.next(timeout=60)
            assert message is not None, "the server closed the socket"
            task_id = message.get("data", {}).get("task_id") or ""
            if not task_id.startswith(prefix) or message["type"] not in steps:
                continue
            step = steps[message["type"]]
            seen[(task_id, step)] += 1
            if last_step.get(task_id, -1) >= step:
                out_of_order.append((task_id, message["type"]))
            last_step[task_id] = step
            ids.append(tuple(int(part) for part in message["id"].split("-")))
        await sending
        assert out_of_order == []
        assert ids == sorted(ids)
        marker = f"{prefix}-marker"
        await asyncio.to_thread(send_marker, broker.url, marker)
        await client.wait_for(of_task(marker, "task_started"), timeout=30)
        # Once the marker is here, anything sent twice would have come before it.
        counts = collections.Counter(
            (m["data"]["task_id"], m["type"]) for m in client.received
            if m["type"] in steps and m["data"]["task_id"].startswith(prefix)
            and m["data"]["task_id"] != marker)
        assert len(counts) == 3 * BURST_TASKS and set(counts.values()) == {1}
        client.close()
    finally:
        child.stop()


def send_marker(broker_url: str, task_id: str) -> None:
    app = Celery("burst-marker", broker=broker_url, set_as_current=False)
    with app.events.default_dispatcher(hostname="burst-0@localhost") as dispatcher:
        dispatcher.send("task-started", uuid=task_id)
    app.close()
