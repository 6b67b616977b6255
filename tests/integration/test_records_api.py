"""Task records over REST (and the socket) at scale, scoped, bounded and swept.

The records are written the way workers write them: `Emitter.emit` runs the
real emit script against a private redis-server; the servers are real
`run.py` processes. The 2,000-task data set is written before any server
runs, and read from two servers on one Redis, one of them restarted.
"""

import collections
import itertools
import threading
import time
import urllib.parse
import uuid
from typing import Dict, List

import pytest
import redis

from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.protocol import task_events as events
from notify_server.protocol.names import Keys
from notify_server.worker.emitter import Emitter
from tests.support.client import WsClient
from tests.support.http_probe import get_json
from tests.support.processes import start_server
from tests.support.records import (first_ids, list_page, rest_record, socket_record,
                                   stream_key, walk)
from tests.support.tokens import SECRET, sign
from tests.support.waiting import eventually

KEYS = Keys()
USERS = ("u0", "u1", "u2")
NAMES = ("app.fetch", "app.encode", "app.upload", "app.notify")
WORKERS = ("w0@host", "w1@host")
OUTCOMES = ("success", "failed", "revoked", "started", "progress", "retrying")
TOKEN_ENV = {"NOTIFY_AUTH_SECRET": SECRET}
ADMIN = sign("root", ttl=3600, admin=True)


def token_of(user: str) -> str:
    return sign(user, ttl=3600)


def task_events_of(task_id: str, avid: str, outcome: str) -> List[dict]:
    """The events a task with `outcome` has had (its final status is `outcome`)."""
    started = events.task_started(task_id, avid)
    return {
        "success": [started, events.task_completed(task_id, avid, f"{avid} ok")],
        "failed": [started, events.task_failed(task_id, avid, "ValueError: no")],
        "revoked": [events.task_revoked(task_id, avid, "revoked")],
        "started": [started],
        "progress": [started, events.task_progress(task_id, avid, 1, 4, "a quarter")],
        "retrying": [started, events.task_retrying(task_id, avid, "later")],
    }[outcome]


def write(url: str, specs: List[dict], threads: int = 4) -> None:
    """Write every spec's events through the emit script, `threads` writers at once."""
    def run(part):
        emitter = Emitter(url)
        for spec in part:
            for message in task_events_of(spec["task_id"], spec["avid"], spec["status"]):
                emitter.emit(events.with_owner(message, spec.get("owner")),
                             record={"name": spec.get("name"), "worker": spec.get("worker"),
                                     "attempt": 0})
        assert emitter.flush(30) and emitter.dropped == 0

    workers = [threading.Thread(target=run, args=(specs[i::threads],)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not any(worker.is_alive() for worker in workers)


def specs_of(count: int, tag: str) -> List[dict]:
    return [{"task_id": f"{tag}-{index:04d}-{uuid.uuid4().hex[:6]}", "avid": f"AV{index:04d}",
             "owner": USERS[index % 3], "name": NAMES[index % 4 if index % 7 else 0],
             "worker": WORKERS[index % 2], "status": OUTCOMES[(index // 3) % len(OUTCOMES)]}
            for index in range(count)]


def newest_first(specs, order: Dict[str, str]) -> List[str]:
    return [spec["task_id"] for spec in sorted(specs, key=lambda s: stream_key(order[s["task_id"]]),
                                               reverse=True)]


@pytest.fixture(scope="module")
def dataset():
    """2,000 tasks written while no server runs, then two token-mode servers
    on that Redis: (redis url, specs, first ids, [port, port], servers)."""
    redis_server = EmbeddedRedis()
    redis_server.start()
    specs = specs_of(2000, "L")
    write(redis_server.url, specs)
    order = first_ids(redis_server.url)
    servers = [start_server(redis_server.url, env=TOKEN_ENV, name=f"records-{index}")
               for index in range(2)]
    yield redis_server.url, specs, order, [port for _, port in servers], servers
    for child, _ in servers:
        child.stop()
    redis_server.stop()


async def test_every_filter_and_search_walks_exactly_the_expected_records_newest_first(dataset):
    url, specs, order, (port, _), _ = dataset
    everything = await walk(port, ADMIN)
    assert [r["task_id"] for r in everything] == newest_first(specs, order)
    by_id = {r["task_id"]: r for r in everything}
    for spec in specs:
        record = by_id[spec["task_id"]]
        assert (record["avid"], record["name"], record["worker"], record["status"]) == (
            spec["avid"], spec["name"], spec["worker"], spec["status"])

    def expect(predicate):
        return newest_first([s for s in specs if predicate(s)], order)

    cases = [({"status": status}, lambda s, v=status: s["status"] == v) for status in OUTCOMES]
    cases += [({"name": name}, lambda s, v=name: s["name"] == v) for name in NAMES]
    cases += [({"worker": worker}, lambda s, v=worker: s["worker"] == v) for worker in WORKERS]
    cases += [({"status": "failed", "name": "app.fetch", "worker": "w1@host"},
               lambda s: (s["status"], s["name"], s["worker"]) == ("failed", "app.fetch",
                                                                   "w1@host"))]
    cases += [({"q": "AV01"}, lambda s: s["avid"].startswith("AV01")),
              ({"q": "AV1999"}, lambda s: s["avid"] == "AV1999"),
              ({"q": specs[5]["task_id"][:10]}, lambda s: s["task_id"].startswith(
                  specs[5]["task_id"][:10])),
              ({"q": specs[5]["task_id"]}, lambda s: s is specs[5]),
              ({"q": "nothing-like-it"}, lambda s: False)]
    ascending = sorted(order.values(), key=stream_key)
    since_ms, until_ms = stream_key(ascending[700])[0], stream_key(ascending[1400])[0]
    since, until = f"{since_ms / 1000:.3f}", f"{until_ms / 1000:.3f}"
    cases += [({"since": since}, lambda s: stream_key(order[s["task_id"]])[0] >= since_ms),
              ({"until": until}, lambda s: stream_key(order[s["task_id"]])[0] <= until_ms),
              ({"since": since, "until": until, "status": "success"},
               lambda s: since_ms <= stream_key(order[s["task_id"]])[0] <= until_ms
               and s["status"] == "success")]
    for params, predicate in cases:
        for limit in (200, 37):
            walked = [r["task_id"] for r in await walk(port, ADMIN, limit=limit, **params)]
            assert walked == expect(predicate), (params, limit)


async def test_a_user_sees_only_their_records_and_admin_sees_all(dataset):
    url, specs, order, (port, _), _ = dataset
    alice, bobs = "u0", [s for s in specs if s["owner"] == "u1"]
    mine = [s for s in specs if s["owner"] == alice]
    token = token_of(alice)
    assert [r["task_id"] for r in await walk(port, token)] == newest_first(mine, order)
    assert [r["task_id"] for r in await walk(port, token, status="failed")] == newest_first(
        [s for s in mine if s["status"] == "failed"], order)
    # A search that matches another user's task shows nothing of it.
    assert await walk(port, token, q=bobs[0]["task_id"]) == []
    assert await walk(port, token, q=bobs[0]["avid"]) == []
    two = sign("both", ttl=3600, owners=["u0", "u1"])
    assert len(await walk(port, two)) == len(mine) + len(bobs)
    assert len(await walk(port, ADMIN)) == len(specs)

    unknown_status, unknown = await rest_record(port, "no-such-task", token)
    other_status, other = await rest_record(port, bobs[0]["task_id"], token)
    assert (other_status, other) == (unknown_status, unknown) == (404, {
        "code": 404, "message": "no record of this task", "data": None})
    assert (await rest_record(port, mine[0]["task_id"], token))[0] == 200
    assert (await rest_record(port, bobs[0]["task_id"], ADMIN))[0] == 200

    client = await WsClient.connect(port, f"token={token}")
    await client.wait_for(lambda m: m["type"] == "queue_status")
    refused = await socket_record(client, bobs[0]["task_id"])
    assert refused["type"] == "error" and refused["data"]["code"] == "not_found"
    assert (await socket_record(client, mine[0]["task_id"]))["type"] == "task"
    start = len(client.received)
    await client.send({"action": "subscribe", "task_ids": [bobs[0]["task_id"],
                                                          mine[1]["task_id"]]})
    await client.send({"action": "ping"})
    await client.wait_for(lambda m: m["type"] == "pong")
    assert [(m["type"], m["data"].get("task_id")) for m in client.received[start:]] == [
        ("task", mine[1]["task_id"]), ("pong", None)]
    client.close()
    admin = await WsClient.connect(port, f"token={ADMIN}")
    assert (await socket_record(admin, bobs[0]["task_id"]))["type"] == "task"
    admin.close()


async def test_two_servers_and_a_restarted_one_serve_the_records_written_before_any_ran(
        dataset):
    url, specs, order, ports, servers = dataset
    first_pages = [await list_page(port, token=ADMIN, limit=200) for port in ports]
    assert first_pages[0] == first_pages[1]
    assert (await rest_record(ports[0], specs[9]["task_id"], ADMIN)) == \
        (await rest_record(ports[1], specs[9]["task_id"], ADMIN))
    servers[0][0].stop()
    child, port = start_server(url, env=TOKEN_ENV, name="records-0")
    servers[0], ports[0] = (child, port), port
    assert await list_page(port, token=ADMIN, limit=200) == first_pages[1]
    assert [r["task_id"] for r in await walk(port, ADMIN)] == newest_first(specs, order)


async def test_a_cursor_walk_while_tasks_arrive_and_change_repeats_and_skips_nothing(dataset):
    url, specs, order, (port, _), _ = dataset
    existing = newest_first(specs, order)
    newcomers = specs_of(300, f"N{uuid.uuid4().hex[:4]}")
    stop = threading.Event()

    def churn():
        emitter = Emitter(url)
        for spec, old in zip(newcomers, itertools.cycle(specs)):
            if stop.is_set():
                return
            write(url, [spec], threads=1)
            # An old task gets a late event: its record changes, its place does not.
            emitter.emit(events.task_progress(old["task_id"], old["avid"], 2, 4, "late"))

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    try:
        walked = [r["task_id"] for r in await walk(port, ADMIN, limit=25)]
    finally:
        stop.set()
        writer.join(60)
    counts = collections.Counter(walked)
    assert [task_id for task_id, count in counts.items() if count > 1] == []
    assert [task_id for task_id in walked if task_id in set(existing)] == existing
    newcomer_ids = {spec["task_id"] for spec in newcomers}
    assert set(walked) - set(existing) <= newcomer_ids


# -- bounds and retention ---------------------------------------------------------------


async def wait_for_config(url: str, **expected) -> None:
    """Until a server has handed the emit script its bounds."""
    client = redis.Redis.from_url(url, decode_responses=True)

    async def read():
        return client.hgetall(KEYS.records_config)

    try:
        await eventually(read, lambda config: all(
            k in config and float(config[k]) == float(v) for k, v in expected.items()))
    finally:
        client.close()


def simple(tag: str, status: str, count: int) -> List[dict]:
    return [{"task_id": f"{tag}-{index:02d}", "avid": f"{tag}{index}", "owner": "u0",
             "status": status} for index in range(count)]


async def test_over_the_maximum_the_oldest_finished_records_go_first_then_failed_then_any(
        make_redis):
    broker = make_redis()
    child, port = start_server(broker.url, env={"NOTIFY_TASK_MAX": "50"}, name="records-max")
    try:
        await wait_for_config(broker.url, max="50")
        done, failed, running = simple("s", "success", 20), simple("f", "failed", 10), \
            simple("r", "started", 20)
        for batch in (done, failed, running):   # in this order: oldest first
            write(broker.url, batch, threads=1)
        kept = [s["task_id"] for s in done + failed + running]

        async def listed():
            return sorted(r["task_id"] for r in await walk(port))

        assert await listed() == sorted(kept)
        newer = simple("n", "started", 35)
        stages = [(5, done[5:] + failed + running), (20, failed + running),
                  (30, running), (35, running[5:])]
        written = 0
        for upto, survivors in stages:
            write(broker.url, newer[written:upto], threads=1)
            written = upto
            expected = [s["task_id"] for s in survivors + newer[:upto]]
            assert await listed() == sorted(expected), upto
            assert redis.Redis.from_url(broker.url).zcard(KEYS.all_records) == 50
        assert (await get_json(port, f"/api/tasks/{done[0]['task_id']}"))[0] == 404
        assert (await get_json(port, f"/api/tasks/{failed[-1]['task_id']}"))[0] == 404
    finally:
        child.stop()


async def test_records_past_their_retention_are_swept_with_their_index_entries(make_redis):
    broker = make_redis()
    env = {"NOTIFY_TASK_RETENTION": "2", "NOTIFY_TASK_FAILED_RETENTION": "3600"}
    child, port = start_server(broker.url, env=env, name="records-retention")
    try:
        await wait_for_config(broker.url, retention="2", failed_retention="3600")
        old = simple("old", "success", 5) + simple("oldf", "failed", 5) + \
            simple("oldr", "started", 5)
        write(broker.url, old, threads=1)
        written_at = time.time()
        # Retention is wall-clock time: nothing to await but the clock itself.
        time.sleep(max(0.0, written_at + 2.5 - time.time()))
        assert len(await walk(port)) == 15
        # The lease holder sweeps every 60 s, and within 5 s of taking the
        # lease: a restarted server, the new holder, sweeps at once.
        child.stop()
        child, port = start_server(broker.url, env=env, name="records-retention")
        child.wait_for_line(r"task records: 10 past their retention removed", timeout=30)

        kept = {s["task_id"] for s in simple("oldf", "failed", 5)}
        assert {r["task_id"] for r in await walk(port)} == kept
        assert await walk(port, status="success") == []
        assert await walk(port, status="started") == []
        assert await walk(port, q="old-") == []
        for spec in old[:5] + old[10:]:
            assert (await get_json(port, f"/api/tasks/{spec['task_id']}"))[0] == 404
        client = redis.Redis.from_url(broker.url, decode_responses=True)
        indexes = [KEYS.all_records, KEYS.owner_records("u0")] + [
            KEYS.status_records(s, owner) for s in ("success", "started", "failed")
            for owner in (None, "u0")]
        members = {m for index in indexes for m in client.zrange(index, 0, -1)}
        assert {m[21:] for m in members} == kept
        client.close()
    finally:
        child.stop()


# -- bad input --------------------------------------------------------------------------


@pytest.mark.parametrize("query, parameter", [
    ("status=bogus", "status"), ("status=success&status=failed", "status"),
    ("limit=0", "limit"), ("limit=201", "limit"), ("limit=-1", "limit"),
    ("limit=1.5", "limit"), ("limit=99999999999999999999999", "limit"), ("limit=abc", "limit"),
    ("limit=10&limit=20", "limit"), ("since=-1", "since"), ("until=-5", "until"),
    ("since=nan", "since"), ("since=inf", "since"), ("since=1e300", "since"),
    ("since=abc", "since"), ("since=10&until=5", "since"), ("cursor=garbage", "cursor"),
    ("cursor=!!!!", "cursor"), ("cursor=", "cursor"), ("cursor=%FF", "cursor"),
    ("cursor=MDAwMDAwMDAwMDAwMS0wMDAwMDAgAQ", "cursor"),   # a sort key with \x01 in its id
    ("foo=1", "foo"), ("Status=success", "Status"), ("name=", "name"),
    ("name=" + "x" * 201, "name"), ("worker=", "worker"), ("q=", "q"), ("q=%FF", "q"),
])
async def test_a_bad_list_query_is_a_400_naming_the_parameter(dataset, query, parameter):
    port = dataset[3][0]
    status, body = await get_json(port, f"/api/tasks?{query}&token={ADMIN}")
    assert (status, body["code"], body["data"]) == (400, 400, None), body
    assert body["message"].startswith(f"{parameter}:"), body


@pytest.mark.parametrize("path, parameter", [
    ("/api/tasks/" + "a" * 256, "task_id"), ("/api/tasks/a%01b", "task_id"),
    ("/api/tasks/a%7Fb", "task_id"), ("/api/tasks/a%0Ab", "task_id"),
    ("/api/tasks/some-task?limit=5", "limit"),
    ("/api/tasks/stats/minutes?minutes=0", "minutes"),
    ("/api/tasks/stats/minutes?minutes=121", "minutes"),
    ("/api/tasks/stats/minutes?minutes=-1", "minutes"),
    ("/api/tasks/stats/minutes?minutes=abc", "minutes"),
    ("/api/tasks/stats/minutes?minutes=5&minutes=6", "minutes"),
    ("/api/tasks/stats/minutes?hours=1", "hours"),
])
async def test_a_bad_task_path_or_minutes_query_is_a_400_naming_the_parameter(dataset, path,
                                                                            parameter):
    port = dataset[3][0]
    joiner = "&" if "?" in path else "?"
    status, body = await get_json(port, f"{path}{joiner}token={ADMIN}")
    assert (status, body["code"], body["data"]) == (400, 400, None), body
    assert body["message"].startswith(f"{parameter}:"), body


async def test_odd_but_valid_task_ids_are_looked_up_not_refused(dataset):
    port = dataset[3][0]
    for task_id in ("a" * 255, "ünïcødé", "with space", "a%2Fb", "queue", "stats"):
        status, body = await get_json(
            port, f"/api/tasks/{urllib.parse.quote(task_id, safe='%')}?token={ADMIN}")
        assert (status, body["message"]) == (404, "no record of this task"), (task_id, body)
    status, body = await get_json(port, f"/api/tasks/%FF?token={ADMIN}")
    assert status == 400 and body["code"] == 400, body
