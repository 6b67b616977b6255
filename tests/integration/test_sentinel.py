"""Redis high availability through Sentinel, on real processes.

A primary, a replica and three sentinels (tests/support/sentinel.py); one
server configured with the sentinels only (no REDIS_URL); a worker-side
emitter, also behind the sentinels, writing 50 numbered events a second from
a thread; 20 clients that resume with `last_event_id` if their socket drops.
The primary is killed with SIGKILL while events flow. What each failover
cost is written to test-artifacts/sentinel-failover.txt.
"""

import asyncio
import json
import logging
import re
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Set, Tuple

import psutil
import pytest
import redis
import redis.asyncio
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError

from notify_server.protocol.names import Keys
from notify_server.protocol.stream import parse_stream_id
from notify_server.worker.emitter import Emitter
from tests.support.client import WsClient
from tests.support.http_probe import readyz
from tests.support.processes import ARTIFACTS, Child, start_server
from tests.support.progress_events import progress
from tests.support.sentinel import SentinelCluster
from tests.support.waiting import eventually
from tests.support.written_emitter import WrittenEmitter

MASTER = "notify-test"
TAG = "HA"
RATE = 50            # events per second from the worker-side emitter
CLIENTS = 20
FINAL_BATCH = 50     # published at once after the promotion: the marker every client must get
HISTORY = Keys().history_stream

FIGURES: Dict[str, List[str]] = {}


@pytest.fixture
def cluster():
    started = SentinelCluster(MASTER).start()
    yield started
    started.stop()


class Publisher:
    """A worker's emitter in a thread of its own: events numbered 0, 1, 2, ...
    at `rate` a second until `stop`. `published` counts the `emit` calls that
    returned, so every number from `published` on is emitted after it is read."""

    def __init__(self, emitter: Emitter, rate: float):
        self.emitter, self._rate = emitter, rate
        self.published = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="publisher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        while not self._stopping.is_set():
            self.emit_next()
            self._stopping.wait(max(0.0, started + self.published / self._rate
                                    - time.monotonic()))

    def emit_next(self) -> None:
        self.emitter.emit(progress(TAG, self.published))
        self.published += 1

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)


class ResumingClient:
    """Reads every message and notes when it arrived; when its socket closes
    it reconnects with the last event id it saw, as the JS client does."""

    def __init__(self, port: int):
        self.port = port
        self.received: List[Tuple[float, dict]] = []
        self.events: List[Tuple[float, dict]] = []   # the task_progress events of TAG
        self._numbers: Set[int] = set()
        self.last_event_id: Optional[str] = None
        self.reconnects = 0
        self._changed = asyncio.Condition()
        self._reader: Optional[asyncio.Task] = None
        self._socket: Optional[WsClient] = None

    async def start(self) -> "ResumingClient":
        """Connect and return once the server has sent the first `queue_status`
        (the client is in the hub: it gets every event from now on)."""
        self._socket = await WsClient.connect(self.port)
        self._reader = asyncio.ensure_future(self._read())
        await self.until(lambda: bool(self.received), 10)
        assert self.received[0][1]["type"] == "queue_status", self.received[0]
        return self

    async def _read(self) -> None:
        while True:
            frame = await self._socket.connection.read_message()
            if frame is None:
                self._socket = await self._reconnect()
                continue
            self._note(json.loads(frame))
            async with self._changed:
                self._changed.notify_all()

    def _note(self, message: dict) -> None:
        arrival = (time.monotonic(), message)
        self.received.append(arrival)
        if "id" in message:
            self.last_event_id = message["id"]
        if message["type"] == "task_progress" and message["data"]["avid"] == TAG:
            self.events.append(arrival)
            self._numbers.add(message["data"]["current"])

    async def _reconnect(self) -> WsClient:
        query = f"last_event_id={self.last_event_id}" if self.last_event_id else ""
        while True:
            try:
                socket = await WsClient.connect(self.port, query=query)
            except (OSError, HTTPClientError, StreamClosedError):
                await asyncio.sleep(0.2)  # the server is not back yet: retry
                continue
            self.reconnects += 1
            return socket

    async def until(self, condition: Callable[[], bool], timeout: float) -> None:
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(condition), timeout)
            except asyncio.TimeoutError:
                raise AssertionError(f"client not there within {timeout} s; numbers end with "
                                     f"{self.numbers[-5:]}") from None

    @property
    def numbers(self) -> List[int]:
        return [m["data"]["current"] for _, m in self.events]

    def has(self, number: int) -> bool:
        return number in self._numbers

    @property
    def resyncs(self) -> int:
        return sum(m["type"] == "resync" for _, m in self.received)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._socket is not None:
            self._socket.close()


def out_of_order(stream: List[dict]) -> List[Tuple[str, str]]:
    """Consecutive events of `stream` whose ids do not increase (duplicates included)."""
    ids = [(m["id"], parse_stream_id(m["id"])) for m in stream if m["type"] == "task_progress"]
    return [(a, b) for (a, key_a), (b, key_b) in zip(ids, ids[1:]) if key_b <= key_a]


def silent_gaps(stream: List[dict]) -> List[Tuple[int, int]]:
    """(before, after) for each jump in the numbers of `stream` (from -1, so a
    missing start counts) that no `resync` announced. A `resync` tells the
    client to rebuild its state from the next `queue_status`: it covers every
    gap until then. (After a failover the relay sends it as it reaches the new
    primary, then relays what that one holds: events the replica had, the
    lost window, events written after the promotion.)"""
    gaps, previous, announced = [], -1, False
    for message in stream:
        if message["type"] == "resync":
            announced = True
        elif message["type"] == "queue_status":
            announced = False
        elif message["type"] == "task_progress":
            number = message["data"]["current"]
            if number > previous + 1 and not announced:
                gaps.append((previous, number))
            previous = max(previous, number)
    return gaps


def unannounced_losses(stream: List[dict], retained: Set[str]) -> List[str]:
    """Ids of events the client got that the history no longer holds, with no
    `resync` after the last of them (the relay promises one: its last id is gone)."""
    missing, announced = [], True
    for message in stream:
        if message["type"] == "resync":
            announced = True
        elif message["type"] == "task_progress" and message["id"] not in retained:
            missing.append(message["id"])
            announced = False
    return [] if announced else missing


def read_history(address: Tuple[str, int]) -> List[Tuple[str, int]]:
    """(id, number) of every event of TAG in the history of the Redis at `address`."""
    host, port = address
    client = redis.Redis(host=host, port=port, decode_responses=True)
    try:
        entries = client.xrange(HISTORY, "-", "+")
    finally:
        client.close()
    return [(entry_id, event["data"]["current"]) for entry_id, event in
            ((entry_id, json.loads(fields["event"])) for entry_id, fields in entries)
            if event["data"].get("avid") == TAG]


def read_lease(address: Tuple[str, int]) -> Optional[str]:
    """Who holds the poller lease in the Redis at `address`."""
    host, port = address
    client = redis.Redis(host=host, port=port, decode_responses=True)
    try:
        return client.get(Keys().leader_key)
    finally:
        client.close()


def start_sentinel_server(cluster: SentinelCluster) -> Tuple[Child, int]:
    """`run.py` with the sentinels and the master name, and REDIS_URL empty."""
    server, port = start_server(None, env={"NOTIFY_REDIS_SENTINELS": cluster.sentinels_setting,
                                           "NOTIFY_REDIS_MASTER": cluster.master},
                                name="server-sentinel")
    # An empty REDIS_URL with sentinels set must not start an embedded Redis.
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert not any("redis-server" in " ".join(child.cmdline()) for child in children)
    assert not any("embedded Redis" in line for line in server.output)
    return server, port


async def every(clients: List[ResumingClient], condition: Callable[[ResumingClient], bool],
                timeout: float) -> None:
    await asyncio.gather(*(c.until(lambda c=c: condition(c), timeout) for c in clients))


class Failover:
    """The server, the emitter and the clients with events flowing (`async
    with`); `kill_primary` and what it cost. Leaving stops the server."""

    def __init__(self, cluster: SentinelCluster):
        self.cluster = cluster
        self.emitter = Emitter(None, sentinels=cluster.sentinels, master=cluster.master)
        self.publisher = Publisher(self.emitter, RATE)
        self.clients: List[ResumingClient] = []
        self.history: List[Tuple[str, int]] = []
        self.server: Optional[Child] = None

    async def __aenter__(self) -> "Failover":
        self.server, self.port = start_sentinel_server(self.cluster)
        try:
            await eventually(lambda: readyz(self.port), lambda r: r[0] == 200, timeout=20)
            self.clients = list(await asyncio.gather(
                *(ResumingClient(self.port).start() for _ in range(CLIENTS))))
            self.publisher.start()
            await every(self.clients, lambda c: len(c.events) >= RATE, timeout=20)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info) -> None:
        self.publisher.stop()
        for client in self.clients:
            await client.close()
        self.exit_code = self.server.stop()

    async def kill_primary(self, then: Callable[[], None] = lambda: None) -> None:
        """SIGKILL the primary (and call `then()` at once), wait for the
        sentinels to promote the replica, keep publishing until events emitted
        after the promotion reach every client, then publish a final batch and
        wait for it and for /readyz."""
        watch = await self.cluster.watch_failover()
        try:
            self.killed_at, self.killed_wall = time.monotonic(), time.time()
            self.cluster.kill_primary()
            then()
            self.new_primary = await watch.promoted(timeout=30)
            self.promoted_at = time.monotonic()
        finally:
            await watch.close()
        assert self.new_primary == self.cluster.replica.address
        ready_again = asyncio.ensure_future(self._ready_and_leading())

        # The emit of `published` may have begun before the kill: count from the next one.
        self.first_after_promotion = self.publisher.published + 1
        await every(self.clients, lambda c: c.has(self.first_after_promotion), timeout=20)
        self.publisher.stop()
        loop = asyncio.get_running_loop()
        for _ in range(FINAL_BATCH):
            await loop.run_in_executor(None, self.publisher.emit_next)
        self.last = self.publisher.published - 1
        await every(self.clients, lambda c: c.has(self.last), timeout=20)

        status = await ready_again
        assert status["ready"] and status["broker"], status
        self.history = read_history(self.new_primary)
        assert read_lease(self.new_primary) == status["instance"]

    async def _ready_and_leading(self) -> dict:
        """/readyz's body once it is ready again and this process (the only one)
        holds the poller lease again; notes when (`ready_after`)."""
        _, status = await eventually(
            lambda: readyz(self.port),
            lambda r: r[0] == 200 and r[1]["redis"] and r[1]["leader"] == r[1]["instance"],
            timeout=30)
        self.ready_after = time.monotonic() - self.promoted_at
        return status

    @property
    def lost(self) -> List[int]:
        """Numbers the emitter wrote (to the old primary) that the new primary does not hold."""
        return sorted(set(range(self.publisher.published)) - {n for _, n in self.history})

    def measure(self, title: str, emitter_log: List[str]) -> None:
        """Write this run's figures to test-artifacts/sentinel-failover.txt (and print them)."""
        held = [number for _, number in self.history]
        lost = self.lost
        kill_ms = int(self.killed_wall * 1000)
        first_new_id, first_new = next((i, n) for i, n in self.history
                                       if parse_stream_id(i)[0] > kill_ms)
        arrivals = [at for c in self.clients for at, m in c.events if m["id"] == first_new_id]
        silences = sorted(max(b - a for (a, _), (b, _) in zip(c.events, c.events[1:]))
                          for c in self.clients)
        server_log = [line.split(": ", 1)[-1].strip() for line in self.server.output
                      if re.search(r"events subscription|lead|lease|snapshot", line)]
        figures = {
            "events published by the emitter": self.publisher.published,
            "events in the new primary's history": f"{len(held)} "
                                                   f"({len(held) - len(set(held))} written twice)",
            "events lost (published, not in the new primary's history)":
                f"{len(lost)} {lost[:20]}",
            "  of them, received by every client before the kill":
                sum(all(c.has(n) for c in self.clients) for n in lost),
            "clients (resuming with last_event_id)": len(self.clients),
            "clients that got resync": sum(c.resyncs > 0 for c in self.clients),
            "resync messages in all": sum(c.resyncs for c in self.clients),
            "client reconnects": sum(c.reconnects for c in self.clients),
            "kill -> +switch-master": f"{self.promoted_at - self.killed_at:.2f} s",
            "kill -> first event written to the new primary (its id's time)":
                f"{parse_stream_id(first_new_id)[0] / 1000 - self.killed_wall:.2f} s "
                f"(event {first_new})",
            "+switch-master -> that event at the first / the last client":
                f"{min(arrivals) - self.promoted_at:.2f} s / "
                f"{max(arrivals) - self.promoted_at:.2f} s ({len(arrivals)} clients got it)",
            "longest silence a client saw (median / max over clients)":
                f"{silences[len(silences) // 2]:.2f} s / {silences[-1]:.2f} s",
            "+switch-master -> /readyz ready, this process leading": f"{self.ready_after:.2f} s",
            "emitter log": " | ".join(emitter_log),
            "server log": " | ".join(server_log),
        }
        FIGURES[title] = [f"{name}: {value}" for name, value in figures.items()]
        ARTIFACTS.mkdir(exist_ok=True)
        text = "\n\n".join(f"{name}\n" + "\n".join(f"  {line}" for line in lines)
                           for name, lines in FIGURES.items())
        (ARTIFACTS / "sentinel-failover.txt").write_text(text + "\n")
        print(f"\n{title}\n" + "\n".join(FIGURES[title]))

    def assert_resync_only_if_a_client_saw_a_lost_event(self) -> None:
        """With the server's subscription reading as events come, `resync`
        is sent when some client had received an event the new primary
        lacks, and only then: a failover that lost nothing anyone saw costs
        no reload (before, every failover cost every client one)."""
        lost = set(self.lost)
        seen_lost = sorted(n for n in lost if any(c.has(n) for c in self.clients))
        resynced = [index for index, c in enumerate(self.clients) if c.resyncs]
        assert bool(resynced) == bool(seen_lost), (
            f"clients {resynced} got resync; lost events clients had seen: {seen_lost[:20]}")

    def assert_every_client_got_every_event_or_resync(self) -> None:
        retained = {entry_id for entry_id, _ in self.history}
        for index, client in enumerate(self.clients):
            stream = [m for _, m in client.received]
            got = {m["id"] for _, m in client.events}
            assert out_of_order(stream) == [], f"client {index}: ids out of order"
            gaps = silent_gaps(stream)
            assert gaps == [], (f"client {index}: gaps (last number before, first after) "
                                f"without resync: {gaps}")
            assert unannounced_losses(stream, retained) == [], (
                f"client {index} got events the new primary does not hold, and no resync")
            assert client.resyncs or retained <= got, (
                f"client {index}: no resync, yet missing "
                f"{[n for i, n in self.history if i not in got][:20]}")
            assert set(range(self.first_after_promotion, self.last + 1)) <= set(client.numbers), (
                f"client {index} misses events published after the promotion")
        assert self.emitter.pending == 0 and self.emitter.dropped == 0
        assert not any("Traceback" in line for line in self.server.output), self.server.log_path
        assert self.exit_code == 0


async def test_a_killed_primary_is_replaced_and_every_client_gets_every_event_or_resync(
        cluster, caplog):
    async with Failover(cluster) as run:
        await run.kill_primary()
    run.measure("kill -9 of the primary under 50 events/s, 20 clients", caplog.messages)
    run.assert_every_client_got_every_event_or_resync()
    run.assert_resync_only_if_a_client_saw_a_lost_event()


async def test_events_the_replica_never_got_reach_clients_then_resync(cluster, caplog):
    async with Failover(cluster) as run:
        # The replica stops behind a full socket; the primary acknowledges and
        # publishes 10 more events that only the server's subscription gets.
        await asyncio.get_running_loop().run_in_executor(None, cluster.lag_replica)
        beyond = run.publisher.published + 10
        await every(run.clients, lambda c: c.has(beyond), timeout=10)
        await run.kill_primary()

        assert beyond in run.lost
        lost_id = next(m["id"] for _, m in run.clients[0].events
                       if m["data"]["current"] == beyond)
        late = await WsClient.connect(run.port, query=f"last_event_id={lost_id}")
        assert (await late.next())["type"] == "resync"
        late.close()
    run.measure("kill -9 of the primary while the replica lags (paused behind a full socket)",
                caplog.messages)
    run.assert_every_client_got_every_event_or_resync()
    assert len(run.lost) >= 10, run.lost
    assert all(client.resyncs for client in run.clients)
    run.assert_resync_only_if_a_client_saw_a_lost_event()


async def primary_acknowledged(cluster: SentinelCluster, number: int) -> None:
    """Return once the primary's history holds event `number` (a blocking XREAD, no polling)."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=cluster.primary.port,
                                 decode_responses=True)
    try:
        cursor = "0-0"
        while True:
            reply = await client.xread({HISTORY: cursor}, block=5000)
            assert reply, f"the primary did not get event {number} within 5 s"
            for entry_id, fields in reply[0][1]:
                if json.loads(fields["event"])["data"].get("current", -1) >= number:
                    return
                cursor = entry_id
    finally:
        await client.aclose()


async def test_events_neither_the_replica_nor_the_server_got_are_announced_by_resync(
        cluster, caplog):
    """The server was still reading a backlog when the primary died: events
    it never read may be gone, so every client gets `resync`."""
    async with Failover(cluster) as run:
        loop = asyncio.get_running_loop()
        # The server's subscription falls behind first, then the replica: events
        # in between reach the replica only, and events after both reach neither,
        # though the primary acknowledged them to the emitter.
        await loop.run_in_executor(None, cluster.lag_subscribers,
                                   lambda: run.server.signal(signal.SIGSTOP), Keys().events_channel)
        await loop.run_in_executor(None, cluster.lag_replica)
        # Half a second of events (25) that only the primary gets: the server is
        # that far behind when the primary dies.
        await primary_acknowledged(cluster, run.publisher.published + 25)
        await run.kill_primary(then=lambda: run.server.signal(signal.SIGCONT))
    run.measure("kill -9 of the primary while the replica and the server's subscription lag",
                caplog.messages)
    assert len(run.lost) >= 10, run.lost
    run.assert_every_client_got_every_event_or_resync()
    assert all(client.resyncs for client in run.clients)


def test_with_wait_replicas_a_write_the_replica_did_not_get_in_time_is_counted_and_logged(
        cluster, caplog):
    """`wait_replicas=1`: a write the replica has is acknowledged as usual; with the
    replica stopped, the write still lands on the primary, is counted as
    unreplicated and logged once, and the next one waits no longer than the timeout."""
    caplog.set_level(logging.WARNING, logger="notify_server.worker.emitter")
    emitter = WrittenEmitter(None, sentinels=cluster.sentinels, master=cluster.master,
                             wait_replicas=1, wait_timeout=0.2)
    emitter.emit(progress("WAIT", 1))
    assert (emitter.written, emitter.unreplicated) == (1, 0)
    cluster.replica.pause()
    try:
        emitter.emit(progress("WAIT", 2))
        emitter.emit(progress("WAIT", 3))
    finally:
        cluster.replica.resume()
    assert (emitter.written, emitter.unreplicated, emitter.pending) == (3, 2, 0)
    warned = [r.getMessage() for r in caplog.records if "replica(s) within" in r.getMessage()]
    assert len(warned) == 1 and "reached 0 of 1 replica(s) within 200 ms" in warned[0]
    numbers = [json.loads(fields["event"])["data"]["current"]
               for _, fields in redis.Redis(*cluster.primary.address, decode_responses=True)
               .xrange(Keys().history_stream) if "WAIT" in fields["event"]]
    assert numbers[-3:] == [1, 2, 3]
