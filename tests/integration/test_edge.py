"""The edge between the broadcast fast path and Tornado, on the real server.

Once the server decides to close a socket it writes nothing but the close
frame; a client that drops its TCP connection costs the others nothing; every
new socket starts with the current `queue_status`.
"""

import asyncio
import json

import redis

from notify_server.protocol.names import Keys
from notify_server.protocol import messages
from notify_server.protocol import task_events
from notify_server.protocol import close_codes
from notify_server.worker.emitter import Emitter
from tests.support.client import WsClient, of_task, queue_status_where
from tests.support.processes import start_server
from tests.support.progress_events import numbers, progress
from tests.support.raw_peer import raw_handshake, reset, upgrade
from tests.support.tasks import submit, unique_avid
from tests.support.wsframes import (OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG, OPCODE_TEXT,
                                    client_frame, parse_close, read_until_eof, split_frames)


async def test_after_a_ping_timeout_close_frame_no_data_frame_follows(redis_server):
    server, port = start_server(redis_server.url, env={"NOTIFY_PING_INTERVAL": "0.5",
                                                        "NOTIFY_PING_TIMEOUT": "0.3"},
                                name="server-ping-timeout")
    try:
        dead = raw_handshake(port)  # never answers a ping
        loop = asyncio.get_running_loop()
        frames = loop.run_in_executor(None, read_until_eof, dead)
        emitter = Emitter(redis_server.url)
        number = 0
        while not frames.done():  # an event every 50 ms until the server drops the peer
            emitter.emit(progress("PINGTO", number))
            number += 1
            await asyncio.sleep(0.05)
        seen = await frames
        dead.close()

        opcodes = [opcode for opcode, _ in seen]
        assert OPCODE_CLOSE in opcodes, opcodes
        close_at = opcodes.index(OPCODE_CLOSE)
        assert parse_close(seen[close_at][1]) == (close_codes.GOING_AWAY, "ping timeout")
        assert OPCODE_TEXT in opcodes[:close_at]
        assert [op for op in opcodes[close_at + 1:]] == []
        assert sum("no pong" in line for line in server.output) == 1
    finally:
        assert server.stop() == 0


async def test_clients_that_reset_their_connections_cost_the_others_nothing(redis_server):
    server, port = start_server(redis_server.url, name="server-resets")
    try:
        healthy = [await WsClient.connect(port) for _ in range(40)]
        dropping = [raw_handshake(port) for _ in range(150)]
        emitter = Emitter(redis_server.url)
        total = 1500
        for number in range(total):
            emitter.emit(progress("RESET", number))
            if number % 10 == 0 and dropping:
                reset(dropping.pop())
                await asyncio.sleep(0)  # let the server see the reset between events

        for client in healthy:
            await client.wait_for(lambda m: m["type"] == "task_progress"
                                  and m["data"]["avid"] == "RESET"
                                  and m["data"]["current"] == total - 1, timeout=30)
            assert numbers(client, "RESET") == list(range(total))
            client.close()
        assert not any("Traceback" in line for line in server.output), server.log_path
    finally:
        assert server.stop() == 0


async def test_a_new_socket_gets_the_current_queue_status_first_on_a_quiet_queue(
        server_port, producer):
    watcher = await WsClient.connect(server_port)
    task_id = submit(producer, unique_avid("QUIET"), seconds=4)
    await watcher.wait_for(queue_status_where(
        lambda d: task_id in [t["task_id"] for t in d["active_tasks"]]))

    late = await WsClient.connect(server_port)
    first = await late.next()

    assert first["type"] == "queue_status"
    assert task_id in [t["task_id"] for t in first["data"]["active_tasks"]]
    await late.wait_for(of_task(task_id, "task_completed"))
    watcher.close()
    late.close()


async def test_a_resumed_socket_gets_the_replay_then_queue_status_then_live_events(redis_server):
    server, port = start_server(redis_server.url, name="server-resume-order")
    try:
        emitter = Emitter(redis_server.url)
        for number in range(4):
            emitter.emit(progress("ORDER", number))
        assert emitter.flush()
        history = redis.Redis.from_url(redis_server.url)
        first_id = history.xrevrange(Keys().history_stream, count=4)[-1][0].decode()
        history.close()

        client = await WsClient.connect(port, query=f"last_event_id={first_id}")
        replayed = [await client.next() for _ in range(3)]
        status = await client.next()
        emitter.emit(progress("ORDER", 4))
        live = await client.wait_for(lambda m: m["type"] == "task_progress")

        assert [m["data"]["current"] for m in replayed] == [1, 2, 3]
        assert status["type"] == "queue_status"
        assert live["data"]["current"] == 4
        client.close()
    finally:
        assert server.stop() == 0


async def test_a_bad_resume_id_gets_queue_status_then_an_error_and_stays_open(server_port):
    client = await WsClient.connect(server_port, query="last_event_id=yesterday")

    assert (await client.next())["type"] == "queue_status"
    error = await client.next()
    assert error["type"] == "error" and error["data"]["code"] == messages.INVALID_ARGUMENT
    await client.send(json.dumps({"action": "ping"}))
    assert (await client.wait_for(lambda m: m["type"] in ("pong", "error")))["type"] == "pong"
    client.close()


async def test_pongs_and_events_arrive_whole_and_in_order_to_a_slow_reader_that_pings(
        redis_server):
    server, port = start_server(redis_server.url, name="server-pings-and-events")
    try:
        peer = raw_handshake(port, receive_buffer=4096)
        total, every = 600, 20
        seen = {"frames": []}

        def read_slowly():  # small reads: the server's writes often find the socket full
            peer.settimeout(30)
            buffer = b""
            while True:
                chunk = peer.recv(512)
                if not chunk:
                    return
                frames, buffer = split_frames(buffer + chunk)
                seen["frames"].extend(frames)
                if any(opcode == OPCODE_TEXT and b'"current":%d,' % (total - 1) in payload
                       for opcode, payload in frames):
                    return

        reader = asyncio.get_running_loop().run_in_executor(None, read_slowly)
        emitter = Emitter(redis_server.url)
        pings = []
        for number in range(total):
            emitter.emit(task_events.task_progress(f"PP-{number}", "PINGPONG", number, total,
                                                "x" * 1000))
            if number % every == 0:
                pings.append(b"p%d" % number)
                peer.sendall(client_frame(OPCODE_PING, pings[-1]))
        await reader
        peer.close()

        frames = seen["frames"]
        texts = [json.loads(payload) for opcode, payload in frames if opcode == OPCODE_TEXT]
        assert [m["data"]["current"] for m in texts if m["type"] == "task_progress"] == \
            list(range(total))
        assert [payload for opcode, payload in frames if opcode == OPCODE_PONG] == pings
        assert {opcode for opcode, _ in frames} <= {OPCODE_TEXT, OPCODE_PONG}
    finally:
        assert server.stop() == 0


async def test_query_arguments_that_are_not_utf8_get_400_and_cost_no_connection_slot(
        redis_server):
    # Before: the 101 went out, `open` raised, Tornado dropped the stream without
    # `on_close`, and each such socket held a per-address slot until a ping failed.
    server, port = start_server(redis_server.url, env={
        "NOTIFY_MAX_CONNECTIONS_PER_IP": "2", "NOTIFY_PING_INTERVAL": "0"})
    try:
        for query in ("last_event_id=%FF", "token=%FF", "last_event_id=%FF", "token=%C3"):
            head, sock = upgrade(port, query)
            sock.close()
            assert head.startswith(b"HTTP/1.1 400 "), (query, head)
        client = await WsClient.connect(port, "last_event_id=%C2%B2-0")  # "²-0"
        assert (await client.next())["type"] == "queue_status"
        refused = await client.next()
        assert refused["data"]["code"] == "invalid_argument"
        second = await WsClient.connect(port)
        assert (await second.next())["type"] == "queue_status"
        client.close()
        second.close()
    finally:
        server.stop()
    assert "Traceback" not in "".join(server.output)


async def test_a_close_frame_whose_reason_is_not_utf8_gives_its_connection_slot_back(
        redis_server):
    # Tornado ends its read loop on the bad reason without calling `on_close`;
    # before, the socket kept its per-address slot for good with pings off.
    from tests.support.http_probe import readyz, wait_for_first_poll
    from tests.support.waiting import eventually
    from tests.support.wsframes import client_frame

    server, port = start_server(redis_server.url, env={
        "NOTIFY_MAX_CONNECTIONS_PER_IP": "2", "NOTIFY_PING_INTERVAL": "0"})
    try:
        wait_for_first_poll(port)  # no queue_status push (a write) finds the sockets dead later
        peers = []
        for _ in range(2):
            _, sock = upgrade(port)
            sock.sendall(client_frame(OPCODE_CLOSE, b"\x03\xe8\xff\xfe"))
            peers.append(sock)  # and keeps its end of the TCP connection open
        await eventually(lambda: readyz(port), lambda answer: answer[1]["clients"] == 0)
        for sock in peers:
            sock.close()
        # Both slots of this address are free again: two sockets open.
        first, second = await WsClient.connect(port), await WsClient.connect(port)
        assert (await first.next())["type"] == (await second.next())["type"] == "queue_status"
        first.close()
        second.close()
    finally:
        server.stop()


async def test_the_channel_carries_only_task_and_worker_events_with_ids_the_history_can_hold(
        server_port, redis_server):
    """A bare PUBLISH of the server's own message types, or with an id ahead of
    the stream, is refused and counted; real events keep flowing. Before, an
    id ahead made the relay drop every real event until the stream caught up."""
    from tests.support.http_probe import scrape

    refused = ("notify_messages_dropped_total", (("reason", "refused"),))
    before = (await scrape(server_port)).get(refused, 0.0)
    client = await WsClient.connect(server_port)
    await client.next()  # queue_status
    publisher = redis.Redis.from_url(redis_server.url)
    channel = Keys().events_channel
    avid = unique_avid("CHAN")
    for fake in ({"type": "queue_status", "data": {"active_tasks": [], "avid": avid}},
                 {"type": "resync", "data": {"reason": avid}},
                 {"type": "error", "data": {"code": "x", "message": avid}, "owner": "alice"},
                 {"type": "task_started", "id": "9999999999999-0",
                  "data": {"task_id": "fake", "avid": avid, "status": "started"}}):
        publisher.publish(channel, json.dumps(fake))
    Emitter(redis_server.url).emit(task_events.task_started("real", avid))
    real = await client.wait_for(of_task("real", "task_started"))
    assert real["id"] is not None
    assert [m for m in client.received if avid in json.dumps(m)] == [real]
    assert (await scrape(server_port)).get(refused, 0.0) - before == 4
    client.close()
