"""Faults on real processes: Redis killed and restarted, slow readers, dead peers,
oversized frames, a killed pool child, a dead broker, SIGTERM.

Each test starts what it needs (or uses the session services where the fault
does not disturb them) and stops it; each is bounded by pytest-timeout.
"""

import asyncio
import json
import os
import signal
import threading

import psutil
from celery import Celery
from tornado.httpclient import AsyncHTTPClient

from notify_server.protocol import close_codes, task_events
from notify_server.worker.emitter import Emitter
from tests.support.client import WsClient, of_task, queue_status_where
from tests.support.http_probe import get_json
from tests.support.processes import start_server, start_worker
from tests.support.progress_events import numbers, progress
from tests.support.raw_peer import raw_handshake, read_until_close_frame
from tests.support.tasks import submit, unique_avid
from tests.support.waiting import eventually
from tests.support.wsframes import OPCODE_CLOSE, free_port, parse_close, read_until_eof

FAULT_TABLE = []


def kill_tree(pid: int) -> None:
    """SIGKILL a worker and its pool children: a crash, not a shutdown."""
    parent = psutil.Process(pid)
    for process in [*parent.children(recursive=True), parent]:
        process.kill()


def record(fault: str, emitted: int, got: list) -> None:
    delivered = len(got)
    FAULT_TABLE.append((fault, emitted, delivered, emitted - len(set(got)),
                        delivered - len(set(got))))
    print(f"FAULT-TABLE | {fault} | {emitted} | {delivered} | {emitted - len(set(got))} | "
          f"{delivered - len(set(got))} |")


async def test_redis_killed_and_restarted_mid_stream_loses_and_duplicates_nothing(make_redis):
    redis = make_redis(appendonly=True)
    server, port = start_server(redis.url, name="server-redis-restart")
    try:
        client = await WsClient.connect(port)
        emitter = Emitter(redis.url, buffer_size=1000)
        for number in range(0, 100):
            emitter.emit(progress("KILL", number))
        await client.wait_for(lambda m: numbers(client, "KILL")[-1:] == [99])

        redis.kill()
        await eventually(lambda: get_json(port, "/readyz"), lambda r: r[0] == 503 and
                         not r[1]["redis"])
        for number in range(100, 200):
            emitter.emit(progress("KILL", number))
        assert emitter.pending == 100
        redis.start()
        for number in range(200, 300):
            emitter.emit(progress("KILL", number))

        await client.wait_for(lambda m: len(numbers(client, "KILL")) >= 300, timeout=30)
        await eventually(lambda: get_json(port, "/readyz"), lambda r: r[1]["redis"])
        await client.send({"action": "ping"})
        await client.wait_for(lambda m: m["type"] == "pong")

        got = numbers(client, "KILL")
        record("redis-server kill -9 and restart mid-stream", 300, got)
        assert got == list(range(300))
        # The restarted Redis (append-only file) holds every event the client saw:
        # nothing to reload, so no resync (the pong above came after the gap fill).
        assert not [m for m in client.received if m["type"] == "resync"]
        assert client.close_code is None
        client.close()
    finally:
        assert server.stop() == 0
    tracebacks = sum("Traceback" in line for line in server.output)
    assert tracebacks == 0, server.log_path


async def test_a_reader_that_stops_reading_is_closed_with_4008_and_others_get_everything(
        redis_server):
    server, port = start_server(redis_server.url, env={"NOTIFY_MAX_CLIENT_BUFFER": "262144"},
                                name="server-slow-reader")
    try:
        slow = raw_handshake(port, receive_buffer=4096)
        fast = await WsClient.connect(port)
        slow_view = {}

        def read_once_cut_off():
            # The slow reader looks at its socket again only after the server gave up on it.
            server.wait_for_line(r"closing slow client", timeout=120)
            slow_view["texts"], slow_view["code"] = read_until_close_frame(slow)

        watcher = threading.Thread(target=read_once_cut_off, daemon=True)
        watcher.start()
        rss_before = psutil.Process(server.process.pid).memory_info().rss
        emitter = Emitter(redis_server.url)
        padding = "x" * 2000
        total, chunk = 10000, 500  # ~20 MB in all, far past the 256 KiB limit
        for first in range(0, total, chunk):
            for number in range(first, first + chunk):
                emitter.emit(progress("SLOW", number, padding))
            await fast.wait_for(lambda m: len(numbers(fast, "SLOW")) >= first + chunk)
        rss_after = psutil.Process(server.process.pid).memory_info().rss
        await asyncio.get_running_loop().run_in_executor(None, watcher.join, 30)

        assert slow_view["code"] == close_codes.SLOW
        metrics = (await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")).body
        assert b"notify_slow_client_disconnects_total 1.0" in metrics
        assert slow_view["texts"] < total
        got = numbers(fast, "SLOW")
        record("one reader stops reading (the other client's view)", total, got)
        assert got == list(range(total))
        assert fast.close_code is None
        growth_mb = (rss_after - rss_before) / 2**20
        print(f"server RSS growth during the slow-reader run: {growth_mb:.1f} MB "
              f"for {total * 2 / 1000:.0f} MB of events")
        assert growth_mb < 10, growth_mb
        slow.close()
        fast.close()
    finally:
        assert server.stop() == 0


async def test_heartbeats_close_dead_peers_and_keep_live_ones(redis_server):
    server, port = start_server(redis_server.url, env={"NOTIFY_PING_INTERVAL": "0.6",
                                                        "NOTIFY_PING_TIMEOUT": "0.3"},
                                name="server-heartbeat")
    try:
        live = await WsClient.connect(port)
        # A live client reads all the time (a Tornado client answers pings only while it reads).
        pong = asyncio.ensure_future(live.wait_for(lambda m: m["type"] == "pong", timeout=60))
        dead = raw_handshake(port)
        await eventually(lambda: get_json(port, "/readyz"), lambda r: r[1]["clients"] == 2)

        await eventually(lambda: get_json(port, "/readyz"), lambda r: r[1]["clients"] == 1)

        frames = await asyncio.get_running_loop().run_in_executor(None, read_until_eof, dead)
        assert frames[-1][0] == OPCODE_CLOSE  # and no frame after it
        assert parse_close(frames[-1][1])[1] == "ping timeout"
        await live.send({"action": "ping"})
        assert (await pong)["data"]["time"] > 0
        assert live.close_code is None
        dead.close()
        live.close()
    finally:
        assert server.stop() == 0


async def test_a_frame_over_the_size_limit_closes_with_1009(server_port):
    client = await WsClient.connect(server_port)
    await client.send(json.dumps({"action": "ping", "pad": "x" * 70000}))
    assert await client.wait_closed() == close_codes.TOO_BIG


async def test_a_killed_pool_child_yields_task_failed_and_leaves_active_tasks(
        server_port, producer):
    client = await WsClient.connect(server_port)
    task_id = submit(producer, unique_avid("KILL9"), seconds=60)
    await client.wait_for(of_task(task_id, "task_started"))
    active = producer.control.inspect(timeout=2).active() or {}
    [pid] = [info["worker_pid"] for tasks in active.values() for info in tasks
             if info["id"] == task_id]

    os.kill(pid, signal.SIGKILL)

    failed = await client.wait_for(of_task(task_id, "task_failed"))
    assert "WorkerLostError" in failed["data"]["message"]
    assert "signal 9" in failed["data"]["message"]
    await client.wait_for(queue_status_where(
        lambda d: all(t["task_id"] != task_id for t in d["active_tasks"])))
    client.close()


async def test_sigterm_closes_every_client_with_1001_and_exits_cleanly(redis_server):
    server, port = start_server(redis_server.url, name="server-sigterm")
    clients = [await WsClient.connect(port) for _ in range(3)]

    server.signal(signal.SIGTERM)

    for client in clients:
        assert await client.wait_closed() == 1001
        assert client.close_reason == "server shutting down"
    assert server.wait(timeout=15) == 0
    assert not any("Traceback" in line for line in server.output)
    server.stop()


async def test_a_dead_broker_makes_the_queue_unavailable_but_not_the_server(make_redis):
    # Its own Redis: servers sharing one share the leader's snapshot, and the
    # other tests' servers poll a live broker.
    redis_server = make_redis()
    dead_broker = f"redis://127.0.0.1:{free_port()}/0"
    server, port = start_server(redis_server.url, env={"CELERY_BROKER_URL": dead_broker},
                                name="server-dead-broker")
    try:
        code, body = await eventually(
            lambda: get_json(port, "/api/tasks/queue/status"),
            lambda r: r[1]["message"].startswith("broker unreachable"))
        assert code == 503 and body["code"] == 503 and body["data"] is None
        code, ready = await get_json(port, "/readyz")
        assert code == 503 and ready["redis"] and not ready["broker"]

        client = await WsClient.connect(port)
        Emitter(redis_server.url).emit(task_events.task_started("dead-broker", "DB-1"))
        await client.wait_for(of_task("dead-broker", "task_started"))
        await client.send({"action": "get_queue_status"})
        status = await client.wait_for(lambda m: m["type"] == "queue_status")
        assert status["data"]["stale"] is True
        client.close()
    finally:
        assert server.stop() == 0


async def test_when_the_workers_go_away_queue_status_keeps_the_last_snapshot_marked_stale(
        make_redis):
    redis = make_redis()
    worker = start_worker(redis.url, "stale@localhost", concurrency=1)
    server, port = start_server(redis.url, name="server-stale")
    producer = Celery("stale-producer", broker=redis.url, set_as_current=False)
    try:
        client = await WsClient.connect(port)
        task_id = submit(producer, unique_avid("LATER"), countdown=600)
        await client.wait_for(queue_status_where(
            lambda d: [t["task_id"] for t in d["scheduled_tasks"]] == [task_id]))

        kill_tree(worker.process.pid)

        stale = await client.wait_for(queue_status_where(lambda d: d["stale"]))
        assert [t["task_id"] for t in stale["data"]["scheduled_tasks"]] == [task_id]
        code, body = await get_json(port, "/api/tasks/queue/status")
        assert code == 200 and body["data"]["stale"] is True
        assert body["message"] == "stale: no Celery worker answered the inspect poll"
        client.close()
    finally:
        producer.close()
        worker.stop()
        assert server.stop() == 0


async def test_a_server_killed_with_sigkill_leaves_no_child_process():
    server, port = start_server(None, name="server-sigkill")  # with its embedded Redis
    await eventually(lambda: get_json(port, "/readyz"), lambda r: r[1]["broker"])
    helpers = psutil.Process(server.process.pid).children(recursive=True)
    names = " ".join(" ".join(helper.cmdline()) for helper in helpers)
    assert "redis-server" in names and "multiprocessing" in names, names

    server.signal(signal.SIGKILL)
    server.wait(timeout=10)

    gone, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive, alive


async def test_shutdown_waits_for_the_clients_that_are_left_and_names_those_that_never_answer(
        redis_server):
    """Four kinds of clients at SIGTERM: one answers the close frame, one closed
    its TCP connection without a close frame, one raw peer never answers, and
    a Tornado client whose event loop stopped reading (this test's loop, blocked
    from the SIGTERM on). The wait ends by the shutdown timeout, counting only
    the two that never answered, and drops them."""
    from tests.support.http_probe import readyz
    from tests.support.raw_peer import upgrade
    from tests.support.wsframes import close_frame

    server, port = start_server(redis_server.url, env={
        "NOTIFY_SHUTDOWN_TIMEOUT": "2", "NOTIFY_PING_INTERVAL": "0"})
    try:
        stalled = await WsClient.connect(port)
        assert (await stalled.next())["type"] == "queue_status"
        _, never = upgrade(port)
        _, gone = upgrade(port)
        _, polite = upgrade(port)

        def answer_the_close() -> None:
            read_until_close_frame(polite)
            polite.sendall(close_frame(1001))
        answering = threading.Thread(target=answer_the_close, daemon=True)
        answering.start()
        gone.close()
        await eventually(lambda: readyz(port), lambda answer: answer[1]["clients"] == 3)

        server.signal(signal.SIGTERM)  # from here this loop no longer runs: `stalled` stops reading
        server.wait_for_line(r"shutting down: closing 3 client\(s\)")
        left = server.wait_for_line(r"(\d+) client\(s\) did not answer the close frame within "
                                    r"2\.0 s; dropping their connections \(from 127\.0\.0\.1\)")
        assert left.group(1) == "2"
        server.wait_for_line(r"stopped")
        assert server.wait(timeout=10) == 0
        answering.join(timeout=10)
        assert not answering.is_alive()
        never.close()
    finally:
        server.stop()
    assert not [line for line in server.output if " 0 client(s)" in line]


async def test_a_redis_restarted_empty_resyncs_the_clients_that_saw_what_it_lost(make_redis):
    """No persistence: the restarted Redis lacks the events clients were told
    of, so each client gets `resync` before the next event."""
    redis = make_redis()
    server, port = start_server(redis.url, name="server-redis-empty-restart")
    try:
        client = await WsClient.connect(port)
        emitter = Emitter(redis.url)
        for number in range(5):
            emitter.emit(progress("EMPTIED", number))
        await client.wait_for(lambda m: numbers(client, "EMPTIED")[-1:] == [4])
        redis.kill()
        await eventually(lambda: get_json(port, "/readyz"), lambda r: not r[1]["redis"])
        redis.start()
        await eventually(lambda: get_json(port, "/readyz"), lambda r: r[1]["redis"])
        emitter.emit(progress("EMPTIED", 5))
        await client.wait_for(lambda m: numbers(client, "EMPTIED")[-1:] == [5])
        after = [m["type"] for m in client.received if m["type"] == "resync"
                 or numbers_of(m, "EMPTIED") == [5]]
        assert after == ["resync", "task_progress"]
        client.close()
    finally:
        assert server.stop() == 0


def numbers_of(message: dict, tag: str) -> list:
    data = message.get("data") or {}
    return [data.get("current")] if message.get("type") == "task_progress" \
        and data.get("avid") == tag else []


async def test_redis_restarted_empty_under_a_stream_of_events_costs_one_resync_not_two(
        make_redis):
    """Events keep coming while Redis dies and comes back empty: the relay was
    behind when it lost Redis *and* the new Redis lacks the last event it
    relayed. One outage is one `resync` for each client (it was two: one per
    reason, within a few ms), then the events after it."""
    redis = make_redis()
    server, port = start_server(redis.url, name="server-redis-restart-streaming")
    stop = threading.Event()

    def stream() -> None:
        emitter = Emitter(redis.url)
        number = 0
        while not stop.is_set():
            emitter.emit(progress("STREAMED", number))
            number += 1
            stop.wait(0.001)
        emitter.flush(10)  # what it buffered while Redis was down, before the marker

    writer = threading.Thread(target=stream, daemon=True)
    try:
        client = await WsClient.connect(port)
        writer.start()
        await client.wait_for(lambda m: len(numbers(client, "STREAMED")) >= 200)
        redis.kill()
        await eventually(lambda: get_json(port, "/readyz"), lambda r: not r[1]["redis"])
        redis.start()
        await eventually(lambda: get_json(port, "/readyz"), lambda r: r[1]["redis"])
        stop.set()
        writer.join(timeout=10)
        marker = unique_avid("AFTER")
        Emitter(redis.url).emit(progress(marker, 1))
        await client.wait_for(lambda m: numbers_of(m, marker) == [1])
        resyncs = [m for m in client.received if m["type"] == "resync"]
        assert len(resyncs) == 1, resyncs
        client.close()
    finally:
        stop.set()
        assert server.stop() == 0
