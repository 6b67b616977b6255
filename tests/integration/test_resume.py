"""Resume: a client that reconnects gets exactly what it missed, or `resync`."""

import asyncio
import threading

from notify_server.protocol.stream import parse_stream_id
from notify_server.worker.emitter import Emitter
from tests.support.client import WsClient
from tests.support.processes import start_server
from tests.support.progress_events import numbers, progress


def emit_numbered(emitter: Emitter, first: int, count: int, tag: str) -> None:
    for number in range(first, first + count):
        emitter.emit(progress(tag, number))


async def test_resume_replays_missed_events_in_order(server_port, redis_server):
    emitter = Emitter(redis_server.url)
    first = await WsClient.connect(server_port)
    emit_numbered(emitter, 0, 5, "RES")
    last = await first.wait_for(lambda m: m["type"] == "task_progress" and m["data"]["current"] == 4)
    first.close()

    emit_numbered(emitter, 5, 20, "RES")
    again = await WsClient.connect(server_port, query=f"last_event_id={last['id']}")
    await again.wait_for(lambda m: m["type"] == "task_progress" and m["data"]["current"] == 24)
    emit_numbered(emitter, 25, 3, "RES")
    await again.wait_for(lambda m: m["type"] == "task_progress" and m["data"]["current"] == 27)

    assert numbers(again, "RES") == list(range(5, 28))
    assert not any(m["type"] == "resync" for m in again.received)
    again.close()


async def test_resume_action_mid_connection_replays_after_the_id(server_port, redis_server):
    emitter = Emitter(redis_server.url)
    client = await WsClient.connect(server_port)
    emit_numbered(emitter, 0, 3, "ACT")
    marker = await client.wait_for(lambda m: m["type"] == "task_progress"
                                   and m["data"]["avid"] == "ACT" and m["data"]["current"] == 0)
    await client.wait_for(lambda m: m["type"] == "task_progress" and m["data"]["current"] == 2)

    await client.send({"action": "resume", "last_event_id": marker["id"]})
    await client.wait_for(lambda m: len(numbers(client, "ACT")) == 5)

    assert numbers(client, "ACT") == [0, 1, 2, 1, 2]
    client.close()


async def test_resume_during_a_burst_gives_one_ordered_stream_without_gaps(
        server_port, redis_server):
    emitter = Emitter(redis_server.url)
    watcher = await WsClient.connect(server_port)
    emit_numbered(emitter, 0, 1, "BURST")
    start = await watcher.wait_for(lambda m: m["type"] == "task_progress"
                                   and m["data"]["avid"] == "BURST")
    watcher.close()
    emit_numbered(emitter, 1, 3000, "BURST")
    assert emitter.flush(30)  # in the history before the live events that follow

    live = threading.Thread(target=emit_numbered, args=(Emitter(redis_server.url), 3001, 1000,
                                                        "BURST"))
    client = await WsClient.connect(server_port, query=f"last_event_id={start['id']}")
    live.start()
    await client.wait_for(lambda m: m["type"] == "task_progress" and m["data"]["current"] == 4000,
                          timeout=60)
    live.join()

    assert numbers(client, "BURST") == list(range(1, 4001))
    event_ids = [parse_stream_id(m["id"]) for m in client.received if "id" in m]
    assert event_ids == sorted(event_ids) and len(set(event_ids)) == len(event_ids)
    client.close()


async def test_resume_from_an_id_older_than_the_history_sends_resync_first(server_port):
    client = await WsClient.connect(server_port, query="last_event_id=1-0")
    first = await client.next()
    assert first["type"] == "resync" and "reload" in first["data"]["reason"]
    await client.send({"action": "ping"})
    assert (await client.wait_for(lambda m: m["type"] == "pong"))["type"] == "pong"
    client.close()


async def test_a_burst_of_resumes_past_the_redis_pool_size_replays_every_one(redis_server):
    """150 clients resuming at once (a process's share after a restart behind
    nginx): each gets its replay. Before, resumes past redis-py's 100 pooled
    connections failed with MaxConnectionsError and got `resync`."""
    import asyncio

    from tests.support.processes import start_server

    server, port = start_server(redis_server.url, name="server-resume-burst")
    try:
        emitter = Emitter(redis_server.url)
        watcher = await WsClient.connect(port)
        emit_numbered(emitter, 0, 30, "BURST")
        first = await watcher.wait_for(lambda m: m["type"] == "task_progress"
                                       and m["data"]["avid"] == "BURST")
        await watcher.wait_for(lambda m: m["type"] == "task_progress"
                               and m["data"]["current"] == 29)
        clients = await asyncio.gather(*(
            WsClient.connect(port, query=f"last_event_id={first['id']}") for _ in range(150)))
        for client in clients:
            await client.wait_for(lambda m: m["type"] == "queue_status")  # ends every replay
        assert [numbers(client, "BURST") for client in clients] == [list(range(1, 30))] * 150
        assert not any(m["type"] == "resync" for client in clients for m in client.received)
        for client in (watcher, *clients):
            client.close()
    finally:
        server.stop()


async def test_a_malformed_history_entry_is_skipped_by_a_resume_and_counted(make_redis):
    from redis import Redis

    from notify_server.protocol.names import Keys
    from tests.support.http_probe import scrape

    # A Redis of its own: the malformed entry must not reach other tests' readers.
    broker = make_redis()
    server, port = start_server(broker.url, name="server-bad-history")
    try:
        emitter = Emitter(broker.url)
        watcher = await WsClient.connect(port)
        emitter.emit(progress("BADH", 0))
        first = await watcher.wait_for(lambda m: m["type"] == "task_progress"
                                       and m["data"]["avid"] == "BADH")
        Redis.from_url(broker.url).xadd(Keys().history_stream, {"event": b"not json"})
        emitter.emit(progress("BADH", 1))
        await watcher.wait_for(lambda m: m["type"] == "task_progress"
                               and m["data"]["avid"] == "BADH" and m["data"]["current"] == 1)
        invalid = ("notify_messages_dropped_total", (("reason", "invalid"),))
        before = (await scrape(port)).get(invalid, 0.0)

        again = await WsClient.connect(port, query=f"last_event_id={first['id']}")
        await again.wait_for(lambda m: m["type"] == "queue_status")  # ends the replay
        assert numbers(again, "BADH") == [1]
        assert (await scrape(port)).get(invalid, 0.0) - before == 1
        watcher.close()
        again.close()
    finally:
        server.stop()


async def test_a_relay_that_began_on_an_empty_history_resyncs_when_an_outage_outran_it(
        make_redis):
    """The relay starts on an empty history, then loses its subscription
    while more events are written than the history keeps (NOTIFY_HISTORY_MAXLEN
    100, 300 written): its client gets `resync` before the events the history
    still holds. Before, a relay that had relayed nothing yet never resynced."""
    from redis import Redis

    from notify_server.protocol.emit_script import EMIT_SCRIPT
    from notify_server.protocol.names import Keys
    from notify_server.protocol.task_events import ONCE_WINDOW, encode_event

    broker = make_redis()
    server, port = start_server(broker.url, env={"NOTIFY_HISTORY_MAXLEN": "100"},
                                name="server-empty-start")
    try:
        client = await WsClient.connect(port)
        await client.wait_for(lambda m: m["type"] == "queue_status")
        keys = Keys()
        # One atomic step: the relay's subscription is cut, then 300 events are
        # written (trimmed to about 100) before it can subscribe again.
        pipe = Redis.from_url(broker.url).pipeline(transaction=True)
        pipe.client_kill_filter(_type="pubsub")
        for number in range(300):
            pipe.eval(EMIT_SCRIPT, 3, keys.history_stream, keys.events_channel, "",
                      encode_event(progress("EMPTY", number)), 100, ONCE_WINDOW, "")
        pipe.execute()
        Emitter(broker.url, history_maxlen=100).emit(progress("EMPTY", 300))
        await client.wait_for(lambda m: numbers(client, "EMPTY")[-1:] == [300])
        kinds = [m["type"] for m in client.received if m["type"] in ("resync", "task_progress")]
        assert kinds[0] == "resync", kinds[:3]
        got = numbers(client, "EMPTY")
        assert got == list(range(got[0], 301)) and got[0] > 0
        client.close()
    finally:
        assert server.stop() == 0
