"""Scoped queue_status from the server's snapshot, to sockets over real socket pairs
(no Redis, broker or worker: the poller's result is handed in as it would be)."""

import socket

import orjson
from tornado.iostream import IOStream

from notify_server.access.auth import EVERYONE, Scope
from notify_server.config import AccessConfig, CeleryConfig, RedisConfig, ServerConfig
from notify_server.queue.replies import normalise
from notify_server.server import NotifyServer
from tests.support.wsframes import read_available, text_payloads


def make_server() -> NotifyServer:
    return NotifyServer(ServerConfig(
        redis=RedisConfig(url="redis://127.0.0.1:1/0", prefix="t"),
        celery=CeleryConfig(broker_url="redis://127.0.0.1:1/0", poll_interval=1.0),
        access=AccessConfig(auth_secrets=("s" * 32,), max_connections=0, max_connections_per_ip=0),
        instance="test:0:1"))


def task(task_id, owner):
    return {"id": task_id, "args": [task_id.upper()], "kwargs": {"user_id": owner},
            "time_start": 1.0}


def poll(server, at, *tasks):
    """What the poller does with a successful poll of these active tasks."""
    if server.queue.update(normalise({"celery@w": list(tasks)}, None, None), at):
        server._on_queue_change()


def joined(server, scope):
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    server.join(*server.connect(IOStream(ours), lambda code, reason: None, "peer", scope))
    return theirs


def statuses(sock):
    return [[entry["task_id"] for entry in message["data"]["active_tasks"]]
            for message in map(orjson.loads, text_payloads(read_available(sock)))
            if message["type"] == "queue_status"]


async def test_each_scope_sees_its_own_tasks_and_no_push_for_others_moves(io_loop):
    server = make_server()
    poll(server, 1.0, task("a1", "alice"))
    alice = joined(server, Scope("alice", frozenset({"alice"})))
    bob = joined(server, Scope("bob", frozenset({"bob"})))
    admin = joined(server, EVERYONE)

    poll(server, 2.0, task("a1", "alice"), task("a2", "alice"))   # only alice's view moves
    poll(server, 3.0, task("a2", "alice"), task("b1", "bob"))     # both move
    poll(server, 4.0, task("a2", "alice"), task("b1", "bob"), task("x1", None))  # nobody's

    assert statuses(alice) == [["a1"], ["a1", "a2"], ["a2"]]
    assert statuses(bob) == [[], ["b1"]]
    assert statuses(admin) == [["a1"], ["a1", "a2"], ["a2", "b1"], ["a2", "b1", "x1"]]
    assert b"owner" not in server.queue_status_frame(EVERYONE)
    assert b"alice" not in server.queue_status_frame(Scope("bob", frozenset({"bob"})))
