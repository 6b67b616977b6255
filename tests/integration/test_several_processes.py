"""Three server processes behind deploy/nginx.conf, sharing one Redis and one Celery worker.

The deployment the README describes, on loopback: a private redis-server (events,
history and broker), one Celery worker, three `run.py --xheaders` processes on the
ports nginx's upstream names, and nginx itself. One process at a time holds the
poller lease and polls inspect for all; the clients are resuming clients that
reconnect through nginx with `?last_event_id=`, as the JavaScript client does.

The processes are shared by the module's tests; each test starts by bringing back
any process an earlier one stopped or killed, so each also passes alone. The
figures (failover time, reconnects) go to test-artifacts/several-processes.txt.
"""

import asyncio
import collections
import dataclasses
import re
import time
import uuid
from typing import Callable, Dict, List, Optional

import orjson
import pytest
import redis
import redis.asyncio
from celery import Celery
from tornado.httpclient import AsyncHTTPClient

from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.protocol.names import Keys
from notify_server.worker.emitter import Emitter
from tests.support import http_probe
from tests.support.nginx import Nginx
from tests.support.processes import ARTIFACTS, Child, start_server, start_worker
from tests.support.progress_events import progress
from tests.support.publisher import Publisher
from tests.support.resuming_client import Fleet
from tests.support.tasks import submit, unique_avid
from tests.support.waiting import eventually
from tests.support.wsframes import free_port

TTL = 2.0
POLL_INTERVAL = 0.5
SERVER_ENV = {
    "NOTIFY_LEADER_TTL": str(TTL),
    "NOTIFY_POLL_INTERVAL": str(POLL_INTERVAL),
    # A discovery poll waits the whole inspect timeout for unknown workers, so
    # it sends fewer broadcasts per second than the polls between: with only
    # the one each new leader starts with, broadcast counts compare like with like.
    "NOTIFY_DISCOVERY_INTERVAL": "3600",
}
CLIENTS = 300
RATE = 50  # events per second
HISTORY = Keys().history_stream
SNAPSHOT_KEY = Keys().queue_key
BROADCAST_WINDOW = 4.0  # seconds over which inspect broadcasts are counted
FIGURES: Dict[str, List[str]] = {}


@dataclasses.dataclass
class Member:
    """One server process of the deployment, on a port of its own for good."""

    name: str
    port: int
    redis_url: str
    child: Optional[Child] = None
    instance: Optional[str] = None  # host:port:pid, as /readyz and the lease name it

    @property
    def running(self) -> bool:
        return self.child is not None and self.child.process.poll() is None

    def start(self) -> None:
        """Start `run.py` on this member's port; returns once it listens."""
        self.child, _ = start_server(self.redis_url, "--xheaders", "--port", str(self.port),
                                     env=SERVER_ENV, name=self.name)
        self.instance = None

    def stop(self) -> int:
        """SIGTERM, as `systemctl stop` does; returns the exit code (-9 when it
        had not exited 15 s later and was killed)."""
        return self.child.stop()

    def kill(self) -> None:
        """SIGKILL, as the OOM killer does."""
        self.child.process.kill()
        self.child.stop()


@dataclasses.dataclass
class Cluster:
    redis: EmbeddedRedis
    members: List[Member]
    nginx: Nginx
    producer: Celery

    def ensure_running(self) -> None:
        """Restart every member an earlier test stopped, and wait until each
        serves the shared snapshot (REST answers 200)."""
        for member in self.members:
            if not member.running:
                member.start()
        for member in self.members:
            http_probe.wait_for_first_poll(member.port, timeout=30.0)


@pytest.fixture(scope="module")
def cluster():
    server = EmbeddedRedis()
    server.start()
    worker = start_worker(server.url, f"several-{uuid.uuid4().hex[:6]}@localhost")
    producer = Celery("test-several", broker=server.url, set_as_current=False)
    members = [Member(f"several-{number}", free_port(), server.url) for number in (1, 2, 3)]
    nginx = None
    try:
        nginx = Nginx(free_port(), [member.port for member in members])
        cluster = Cluster(server, members, nginx, producer)
        cluster.ensure_running()
        yield cluster
    finally:
        if nginx is not None:
            nginx.stop()
        for member in members:
            if member.child is not None:
                member.stop()
        producer.close()
        worker.stop()
        server.stop()


# -- what a process shows ------------------------------------------------------

async def readyz(member: Member) -> dict:
    _, body = await http_probe.readyz(member.port, request_timeout=10)
    member.instance = body["instance"]
    return body


async def leader_gauge(member: Member) -> float:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{member.port}/metrics",
                                             request_timeout=10)
    return float(re.search(r"^notify_poller_leader (\S+)$", response.body.decode(),
                           flags=re.M).group(1))


async def agreed_leader(members: List[Member], timeout: float = 4 * TTL) -> Member:
    """The member that every one of `members` names as the lease holder, once they agree."""
    async def holders():
        return [body["leader"] for body in await asyncio.gather(*map(readyz, members))]
    names = await eventually(holders, lambda found: found[0] is not None
                             and len(set(found)) == 1
                             and found[0] in {member.instance for member in members},
                             timeout=timeout)
    return next(member for member in members if member.instance == names[0])


async def identical_snapshots(cluster: Cluster, accept: Callable[[dict], bool]) -> dict:
    """The queue data all three processes serve at the same poll time, once
    it passes `accept`; fails if they never agree on one `updated_at`."""
    seen = []
    for _ in range(100):
        answers = await asyncio.gather(*(
            http_probe.get_json(member.port, "/api/tasks/queue/status", request_timeout=10)
            for member in cluster.members))
        data = [body["data"] for code, body in answers if code == 200]
        seen = [item["updated_at"] for item in data]
        if len(data) == 3 and len(set(seen)) == 1 and accept(data[0]):
            assert data[1] == data[0] and data[2] == data[0], data
            return data[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"the three processes never served one snapshot; last updated_at: {seen}")


async def count_broadcasts(redis_url: str, seconds: float) -> "collections.Counter[str]":
    """Inspect broadcasts published on the broker within `seconds`, by channel.

    Celery's inspect is a message to the `celery.pidbox` fanout exchange,
    which kombu's Redis transport sends with PUBLISH to `/<db>.celery.pidbox`;
    the replies go to lists (LPUSH) and are not counted."""
    client = redis.asyncio.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.psubscribe("*pidbox*")
    channels: "collections.Counter[str]" = collections.Counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while (remaining := deadline - loop.time()) > 0:
            message = await pubsub.get_message(ignore_subscribe_messages=True,
                                               timeout=remaining)
            if message is not None:
                channels[message["channel"].decode()] += 1
    finally:
        await pubsub.aclose()
        await client.aclose()
    return channels


async def watch_failover(survivors: List[Member], killed: float):
    """(new leader, seconds until a survivor's /readyz named a survivor,
    seconds until a snapshot written by it was in Redis), both from `killed`."""
    client = redis.asyncio.Redis.from_url(survivors[0].redis_url)
    names = {member.instance: member for member in survivors}
    new_leader, lease_after = None, None
    try:
        while time.monotonic() - killed < 4 * TTL + 15:
            if new_leader is None:
                for body in await asyncio.gather(*map(readyz, survivors)):
                    if body["leader"] in names:
                        new_leader, lease_after = names[body["leader"]], time.monotonic() - killed
                        break
            if new_leader is not None:
                shared = orjson.loads(await client.get(SNAPSHOT_KEY))
                if shared["leader"] == new_leader.instance:
                    return new_leader, lease_after, time.monotonic() - killed
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()
    raise AssertionError(f"no survivor took over within {4 * TTL + 15:g} s "
                         f"(lease after {lease_after})")


# -- figures -------------------------------------------------------------------

def report(section: str, *lines: str) -> None:
    """Print figures and keep them, with this run's others, in the artifact file."""
    FIGURES[section] = list(lines)
    for line in lines:
        print(f"SEVERAL-PROCESSES | {section} | {line}")
    ARTIFACTS.mkdir(exist_ok=True)
    text = "".join(f"{name}\n" + "".join(f"  {line}\n" for line in body) + "\n"
                   for name, body in FIGURES.items())
    (ARTIFACTS / "several-processes.txt").write_text(
        f"tests/integration/test_several_processes.py: 3 servers behind nginx, "
        f"NOTIFY_LEADER_TTL={TTL:g} s, NOTIFY_POLL_INTERVAL={POLL_INTERVAL:g} s, "
        f"{CLIENTS} resuming clients, {RATE} events/s\n\n" + text)


# -- traffic -------------------------------------------------------------------

def mark_start(redis_url: str, tag: str) -> str:
    """Write one event before the traffic and return its id: the clients
    resume after it from their first connection on, so each is owed every
    event of `tag` from number 0."""
    emitter = Emitter(redis_url)
    emitter.emit(progress(f"{tag}-START", 0))
    assert emitter.flush()
    client = redis.Redis.from_url(redis_url)
    try:
        return client.xrevrange(HISTORY, count=1)[0][0].decode()
    finally:
        client.close()


async def clients_per_member(cluster: Cluster) -> List[int]:
    return [body["clients"] for body in await asyncio.gather(*map(readyz, cluster.members))]


async def drain(publisher: Publisher, fleet: Fleet) -> int:
    """Stop the traffic and wait until every client holds every event;
    returns how many events were published."""
    emitted = await asyncio.get_running_loop().run_in_executor(None, publisher.stop)
    await fleet.wait_for_numbers(emitted, timeout=30)
    return emitted


def assert_every_client_got_every_event_once_in_order(fleet: Fleet, emitted: int) -> None:
    wrong = [(index, len(client.numbers)) for index, client in enumerate(fleet.clients)
             if client.numbers != list(range(emitted))]
    assert not wrong, f"{len(wrong)} clients did not get events 0..{emitted - 1} exactly once " \
                      f"in order; (client, count): {wrong[:10]}"
    assert sum(client.out_of_order for client in fleet.clients) == 0
    assert all(len(client.ids) == len(set(client.ids)) for client in fleet.clients)
    resyncs = [reason for client in fleet.clients for reason in client.resyncs]
    assert resyncs == [], resyncs[:5]


# -- the tests -----------------------------------------------------------------

async def test_one_leader_polls_for_all_and_every_process_serves_its_snapshot(cluster):
    cluster.ensure_running()
    leader = await agreed_leader(cluster.members)
    gauges = [await leader_gauge(member) for member in cluster.members]
    assert gauges == [1.0 if member is leader else 0.0 for member in cluster.members]

    task_id = submit(cluster.producer, unique_avid("LATER"), seconds=0.2, countdown=30)
    snapshot = await identical_snapshots(
        cluster, lambda data: task_id in {task["task_id"] for task in data["scheduled_tasks"]})
    assert snapshot["stale"] is False

    with_three = await count_broadcasts(cluster.redis.url, BROADCAST_WINDOW)
    followers = [member for member in cluster.members if member is not leader]
    for member in followers:
        assert member.stop() == 0
    with_one = await count_broadcasts(cluster.redis.url, BROADCAST_WINDOW)
    cluster.ensure_running()

    per_interval = {servers: sum(counted.values()) * POLL_INTERVAL / BROADCAST_WINDOW
                    for servers, counted in ((1, with_one), (3, with_three))}
    report("one leader", f"inspect broadcasts per {POLL_INTERVAL:g} s poll interval: "
           f"{per_interval[1]:.1f} with 1 server, {per_interval[3]:.1f} with 3 "
           f"(channels {sorted(set(with_one) | set(with_three))}; "
           f"counted over {BROADCAST_WINDOW:g} s each)")
    assert sum(with_one.values()) >= 3, "the leader alone should have polled at least once"
    assert sum(with_three.values()) <= 1.5 * sum(with_one.values())
    assert await agreed_leader(cluster.members) is leader  # the restarted ones follow
    for member in followers:
        assert await leader_gauge(member) == 0.0


async def test_a_killed_leader_is_replaced_and_resuming_clients_miss_nothing(cluster):
    cluster.ensure_running()
    leader = await agreed_leader(cluster.members)
    survivors = [member for member in cluster.members if member is not leader]
    tag = unique_avid("FAILOVER")
    fleet = Fleet(cluster.nginx.port, CLIENTS, mark_start(cluster.redis.url, tag), tag)
    await fleet.start()
    spread = await clients_per_member(cluster)
    publisher = Publisher(cluster.redis.url, tag, RATE, limit=20 * RATE)
    publisher.start()
    try:
        await fleet.wait_for_numbers(4 * RATE, timeout=30)
        killed_at, started = time.time(), time.monotonic()
        leader.kill()
        # Running until well after the new leader's first poll: its lists differ
        # from the last ones shared before the kill, so every socket gets them.
        submit(cluster.producer, unique_avid("AFTER-KILL"), seconds=8)
        new_leader, lease_after, snapshot_after = await watch_failover(survivors, started)
        while publisher.running:
            await asyncio.sleep(0.2)
        emitted = await drain(publisher, fleet)
    finally:
        publisher.stop()
        await fleet.stop()

    assert_every_client_got_every_event_once_in_order(fleet, emitted)
    moved = [client for client in fleet.clients if client.drops]
    stayed = [client for client in fleet.clients if not client.drops]
    assert moved and stayed
    fresh_after = [min((at for at, data in client.queue_statuses
                        if (data["updated_at"] or 0) > killed_at), default=None)
                   for client in stayed]
    assert None not in fresh_after, \
        f"{fresh_after.count(None)} survivors' clients saw no queue_status polled after the kill"
    report("kill -9 of the leader",
           f"clients per process before: {spread}; {emitted} events at {RATE}/s",
           f"a survivor held the lease {lease_after:.2f} s after the kill "
           f"(TTL {TTL:g} s; within 2 x TTL: {lease_after <= 2 * TTL}); "
           f"its first shared snapshot at {snapshot_after:.2f} s",
           f"survivors' {len(stayed)} clients: queue_status polled after the kill within "
           f"{max(fresh_after) - killed_at:.2f} s (a task was submitted after the kill)",
           f"the killed process's {len(moved)} clients reconnected through nginx "
           f"({fleet.reconnects} reconnects, "
           f"{sum(client.refusals for client in fleet.clients)} refused attempts); "
           f"every client got all {emitted} events once, in order; resyncs: {fleet.resyncs}")
    assert new_leader in survivors
    assert lease_after <= 4 * TTL


async def test_a_rolling_restart_loses_nothing_and_restarted_processes_follow(cluster):
    cluster.ensure_running()
    await agreed_leader(cluster.members)
    tag = unique_avid("ROLLING")
    fleet = Fleet(cluster.nginx.port, CLIENTS, mark_start(cluster.redis.url, tag), tag)
    await fleet.start()
    spread = await clients_per_member(cluster)
    publisher = Publisher(cluster.redis.url, tag, RATE, limit=60 * RATE)
    publisher.start()
    loop = asyncio.get_running_loop()
    steps = []
    try:
        await fleet.wait_for_numbers(2 * RATE, timeout=30)
        for member in cluster.members:
            others = [other for other in cluster.members if other is not member]
            was_leading = (await readyz(member))["leader"] == member.instance
            began = time.monotonic()
            assert await loop.run_in_executor(None, member.stop) == 0
            stopped = time.monotonic() - began
            handed_to = await agreed_leader(others)
            await loop.run_in_executor(None, member.start)
            restarted = time.monotonic() - began
            body = await eventually(lambda: readyz(member), lambda found: found["leader"],
                                    timeout=2 * TTL)
            assert body["leader"] == handed_to.instance != member.instance
            steps.append(f"{member.name}{' (leader)' if was_leading else ''}: stopped in "
                         f"{stopped:.1f} s, listening again after {restarted:.1f} s, "
                         f"rejoined following {handed_to.name}")
            await fleet.wait_for_numbers(publisher.emitted - RATE, timeout=30)
        await fleet.wait_for_numbers(publisher.emitted + RATE, timeout=30)
        emitted = await drain(publisher, fleet)
    finally:
        publisher.stop()
        await fleet.stop()

    assert_every_client_got_every_event_once_in_order(fleet, emitted)
    codes = collections.Counter(code for client in fleet.clients for code in client.drops)
    report("rolling SIGTERM restart of all three",
           f"clients per process before: {spread}; {emitted} events at {RATE}/s", *steps,
           f"{fleet.reconnects} reconnects through nginx (close codes {dict(codes)}; "
           f"{sum(client.refusals for client in fleet.clients)} refused attempts); "
           f"every client got all {emitted} events once, in order; resyncs: {fleet.resyncs}")
    assert set(codes) == {1001}, codes
