"""Attacks on token mode, as a client sees the server answer them.

One real server in token mode (its secret is `tokens.SECRET`, no clock
leeway) on the session's redis-server and Celery worker. Forged, expired and
oversized tokens are refused on the socket (101, then close 4001 with the
reason and no data frame before it) and on REST (401 with
`WWW-Authenticate`); a valid token sees only its owners' events and tasks on
every path; a token runs out on an open socket unless refreshed for the same
subject; slow or oversized request heads, /metrics and foreign origins are
turned away before any handler runs.

Every absence is checked after a later marker arrived on the same socket:
the server relays in stream order, so what was not there by then never comes.
"""

import asyncio
import collections
import json
import re
import time
import uuid

import jwt
import pytest
import redis
from tornado.httpclient import AsyncHTTPClient

from notify_server.protocol import close_codes, task_events
from notify_server.protocol.names import Keys
from notify_server.protocol.task_events import with_owner
from notify_server.worker.emitter import Emitter
from tests.support.async_peer import AsyncPeer, open_stream
from tests.support.client import WsClient, of_task, queue_status_where
from tests.support.processes import start_server
from tests.support.tasks import submit_owned, unique_avid
from tests.support.tokens import OTHER_SECRET, SECRET, sign, spliced, unsigned
from tests.support.waiting import eventually
from tests.support.wsframes import OPCODE_TEXT, read_stream_until_eof, upgrade_request

# HS512 with our 40-character secret makes PyJWT warn the attacker; that is the point.
pytestmark = pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")

MAX_HEADER_SIZE = 16384
METRICS_TOKEN = "scrape-" + uuid.uuid4().hex
ALLOWED_ORIGIN = "http://app.example"
HISTORY = Keys().history_stream
OVERSIZE_HEAD = r"Unsatisfiable read, closing connection: delimiter .* not found within 16384 bytes"

Server = collections.namedtuple("Server", "child port")


@pytest.fixture(scope="module")
def token_server(redis_server, worker):
    """A token-mode server that has a queue snapshot (a poll succeeded)."""
    child, port = start_server(redis_server.url, name="server-attacks", env={
        "NOTIFY_AUTH_SECRET": SECRET, "NOTIFY_AUTH_LEEWAY": "0",
        "NOTIFY_METRICS_TOKEN": METRICS_TOKEN, "NOTIFY_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
        "NOTIFY_MAX_HEADER_SIZE": str(MAX_HEADER_SIZE), "NOTIFY_HEADER_TIMEOUT": "1"})

    async def first_fresh_queue_status() -> None:
        admin = await WsClient.connect(port, query=query(sign("root", admin=True)))
        await admin.wait_for(queue_status_where(lambda data: not data["stale"]))
        admin.close()

    try:
        asyncio.run(first_fresh_queue_status())
    except BaseException:
        child.stop()
        raise
    yield Server(child, port)
    assert child.stop() == 0
    assert not any("Traceback" in line for line in child.output), child.log_path


def query(token: str, **more: str) -> str:
    return "&".join(f"{name}={value}" for name, value in {"token": token, **more}.items())


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def event(tag: str, name: str, owner=None) -> dict:
    """A task_progress of task `tag-name` (avid `tag`), owned by `owner`."""
    return with_owner(task_events.task_progress(f"{tag}-{name}", tag, 1, 10, name), owner)


def task_ids_of(client: WsClient, tag: str) -> list:
    """The task ids of the task events `client` got for avid `tag`, in order."""
    return [m["data"]["task_id"] for m in client.received
            if m["type"].startswith("task_") and m["data"].get("avid") == tag]


def history_id_of(redis_url: str, task_id: str) -> str:
    """The history stream id of the (newest) event of `task_id`."""
    client = redis.Redis.from_url(redis_url)
    try:
        for entry_id, fields in client.xrevrange(HISTORY, count=500):
            if json.loads(fields[b"event"])["data"].get("task_id") == task_id:
                return entry_id.decode()
    finally:
        client.close()
    raise AssertionError(f"no event of {task_id} in the history")


async def rest(port: int, token=None, how: str = "query"):
    """GET /api/tasks/queue/status with `token` in the query or the
    Authorization header (`None`: no token at all, or an empty bearer)."""
    url = f"http://127.0.0.1:{port}/api/tasks/queue/status"
    headers = {}
    if how == "query" and token is not None:
        url += f"?token={token}"
    elif how == "bearer":
        headers = bearer(token or "")
    return await AsyncHTTPClient().fetch(url, headers=headers, raise_error=False)


def all_task_ids(data: dict) -> set:
    return {entry["task_id"] for key in ("active_tasks", "scheduled_tasks", "reserved_tasks")
            for entry in data[key]}


async def log_line_count(child, pattern: str) -> int:
    """How many lines of the server's output so far match `pattern`."""
    return sum(bool(re.search(pattern, line)) for line in list(child.output))


# -- refused tokens -------------------------------------------------------------

NINE_KIB_PAD = "x" * 6700  # the signed token is then about 9 KiB


def nine_kib_token() -> str:
    token = sign("alice", pad=NINE_KIB_PAD)
    assert 8192 < len(token) < MAX_HEADER_SIZE - 1024
    return token


# attack -> (the token it presents, or None for none; the close reason / REST message)
ATTACKS = {
    "no_token": (lambda: None, "token required"),
    "alg_none": (lambda: unsigned("alice", admin=True),
                 "invalid token: The specified alg value is not allowed"),
    "wrong_key": (lambda: sign("alice", secret=OTHER_SECRET),
                  "invalid token: Signature verification failed"),
    "admin_spliced_into_a_valid_token": (lambda: spliced(sign("alice"), admin=True),
                                         "invalid token: Signature verification failed"),
    "expired": (lambda: sign("alice", ttl=-30), "token expired"),
    "not_yet_valid": (lambda: sign("alice", nbf=int(time.time()) + 60),
                      "invalid token: The token is not yet valid (nbf)"),
    "hs512_with_the_same_secret": (lambda: sign("alice", algorithm="HS512"),
                                   "invalid token: The specified alg value is not allowed"),
    "nine_kib_token": (nine_kib_token, "invalid token: longer than 8192 bytes"),
}


@pytest.mark.parametrize("how", ["query", "bearer"])
@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_refused_token_gets_101_then_close_4001_with_the_reason_and_no_data(
        token_server, attack, how):
    make_token, reason = ATTACKS[attack]
    token = make_token()
    if how == "query":
        peer = await AsyncPeer.upgrade(token_server.port,
                                       query="" if token is None else query(token))
    else:  # `Authorization: Bearer` and, for no token, an empty one
        peer = await AsyncPeer.upgrade(token_server.port, headers=bearer(token or ""))

    assert peer.response.status == 101
    before, code, close_reason = await peer.until_close()
    after = await peer.until_ended()

    assert (code, close_reason) == (close_codes.UNAUTHORIZED, reason)
    assert before == [] and after == []


@pytest.mark.parametrize("how", ["query", "bearer"])
@pytest.mark.parametrize("attack", list(ATTACKS))
async def test_a_refused_token_gets_401_from_rest_with_www_authenticate(token_server, attack, how):
    make_token, reason = ATTACKS[attack]

    response = await rest(token_server.port, make_token(), how)

    assert response.code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert json.loads(response.body) == {"code": 401, "message": reason, "data": None}


async def test_a_valid_token_in_the_authorization_header_works_like_the_query_token(
        token_server, redis_server):
    token = sign("alice")
    by_header = await WsClient.connect(token_server.port, headers=bearer(token))
    by_query = await WsClient.connect(token_server.port, query=query(token))
    tag = unique_avid("BEARER")

    Emitter(redis_server.url).emit(event(tag, "mine", owner="alice"))

    for client in (by_header, by_query):
        assert (await client.next())["type"] == "queue_status"
        await client.wait_for(of_task(f"{tag}-mine"))
        client.close()
    for how in ("bearer", "query"):
        response = await rest(token_server.port, token, how)
        assert response.code == 200
        assert json.loads(response.body)["code"] == 200


@pytest.mark.parametrize("where", ["websocket_query", "websocket_bearer", "rest_query"])
async def test_a_request_head_over_max_header_size_is_dropped_without_any_response(
        token_server, where):
    # Tornado 6.5.2 reads the head with read_until_regex(max_bytes=max_header_size):
    # past it the stream is closed at once (UnsatisfiableReadError), no 101, no 4xx.
    token = sign("alice", pad="x" * MAX_HEADER_SIZE)
    assert len(token) > MAX_HEADER_SIZE
    port = token_server.port
    head = {
        "websocket_query": lambda: upgrade_request(port, query(token)),
        "websocket_bearer": lambda: upgrade_request(port, headers=bearer(token)),
        "rest_query": lambda: (f"GET /api/tasks/queue/status?token={token} HTTP/1.1\r\n"
                               f"Host: 127.0.0.1:{port}\r\n\r\n").encode(),
    }[where]()
    logged = await log_line_count(token_server.child, OVERSIZE_HEAD)
    reader, writer = await open_stream(port)

    writer.write(head)
    received, _ = await read_stream_until_eof(reader)
    writer.close()

    assert received == b""
    await eventually(lambda: log_line_count(token_server.child, OVERSIZE_HEAD),
                     lambda count: count == logged + 1)


# -- scoping ----------------------------------------------------------------------

@pytest.mark.parametrize("how", ["resume_action", "last_event_id_query"])
async def test_bob_resuming_from_before_alices_events_gets_only_his_own(
        token_server, redis_server, how):
    emitter = Emitter(redis_server.url)
    tag = unique_avid("RESUME")
    emitter.emit(event(tag, "before", owner="bob"))
    assert emitter.flush()
    since = history_id_of(redis_server.url, f"{tag}-before")
    for name, owner in [("alice-1", "alice"), ("bob-1", "bob"), ("alice-2", "alice"),
                        ("nobody-1", None), ("bob-2", "bob")]:
        emitter.emit(event(tag, name, owner))
    admin_token, bob_token = sign("root", admin=True), sign("bob")

    clients = []
    for token in (bob_token, admin_token):
        if how == "last_event_id_query":
            client = await WsClient.connect(token_server.port,
                                            query=query(token, last_event_id=since))
        else:
            client = await WsClient.connect(token_server.port, query=query(token))
            assert (await client.next())["type"] == "queue_status"
            await client.send({"action": "resume", "last_event_id": since})
        clients.append(client)
    bob, admin = clients
    for client in clients:
        await client.wait_for(of_task(f"{tag}-bob-2"))
        client.close()

    assert task_ids_of(bob, tag) == [f"{tag}-bob-1", f"{tag}-bob-2"]
    assert task_ids_of(admin, tag) == [f"{tag}-{name}" for name in
                                       ("alice-1", "bob-1", "alice-2", "nobody-1", "bob-2")]


async def test_bob_subscribing_to_alices_task_ids_and_avids_gets_nothing_of_hers(
        token_server, redis_server):
    alice_tag, bob_tag = unique_avid("ALICE"), unique_avid("BOB")
    bob = await WsClient.connect(token_server.port, query=query(sign("bob")))
    alice = await WsClient.connect(token_server.port, query=query(sign("alice")))
    await bob.send({"action": "subscribe", "task_ids": [f"{alice_tag}-1", f"{bob_tag}-1"],
                    "avids": [alice_tag, bob_tag]})
    await bob.send({"action": "ping"})  # actions run in order: the subscribe is in place
    await bob.wait_for(lambda m: m["type"] == "pong")
    emitter = Emitter(redis_server.url)

    emitter.emit(event(alice_tag, "1", owner="alice"))
    emitter.emit(event(alice_tag, "2", owner="alice"))
    emitter.emit(event(bob_tag, "1", owner="bob"))

    await alice.wait_for(of_task(f"{alice_tag}-2"))
    await bob.wait_for(of_task(f"{bob_tag}-1"))
    assert task_ids_of(bob, alice_tag) == []
    assert task_ids_of(bob, bob_tag) == [f"{bob_tag}-1"]
    for client in (alice, bob):
        client.close()


async def test_an_event_without_owner_reaches_an_admin_token_and_not_alice(
        token_server, redis_server):
    tag = unique_avid("NOOWNER")
    alice = await WsClient.connect(token_server.port, query=query(sign("alice")))
    bob = await WsClient.connect(token_server.port, query=query(sign("bob")))
    admin = await WsClient.connect(token_server.port, query=query(sign("root", admin=True)))
    for client in (alice, bob, admin):
        assert (await client.next())["type"] == "queue_status"
    emitter = Emitter(redis_server.url)

    for name, owner in [("nobody", None), ("alice-1", "alice"), ("bob-1", "bob"),
                        ("alice-2", "alice"), ("bob-2", "bob")]:
        emitter.emit(event(tag, name, owner))

    await alice.wait_for(of_task(f"{tag}-alice-2"))
    await bob.wait_for(of_task(f"{tag}-bob-2"))
    await admin.wait_for(of_task(f"{tag}-bob-2"))
    assert task_ids_of(alice, tag) == [f"{tag}-alice-1", f"{tag}-alice-2"]
    assert task_ids_of(bob, tag) == [f"{tag}-bob-1", f"{tag}-bob-2"]
    assert task_ids_of(admin, tag) == [f"{tag}-{name}" for name in
                                       ("nobody", "alice-1", "bob-1", "alice-2", "bob-2")]
    for client in (alice, bob, admin):
        client.close()


async def test_queue_status_lists_only_the_tokens_own_tasks_while_alices_task_runs(
        token_server, producer):
    port = token_server.port
    admin_token, alice_token, bob_token = sign("root", admin=True), sign("alice"), sign("bob")
    admin = await WsClient.connect(port, query=query(admin_token))
    bob = await WsClient.connect(port, query=query(bob_token))
    alice_task = submit_owned(producer, unique_avid("QALICE"), "alice", seconds=10)
    bob_task = submit_owned(producer, unique_avid("QBOB"), "bob", seconds=4)

    def active(*task_ids):
        return queue_status_where(
            lambda data: set(task_ids) <= {t["task_id"] for t in data["active_tasks"]})

    # Both run on the worker now (alice's until long after bob's ends)...
    seen_by_admin = await admin.wait_for(active(alice_task, bob_task))
    pushed = await bob.wait_for(active(bob_task))
    await bob.send({"action": "get_queue_status"})
    replied = await bob.wait_for(active(bob_task))
    bob_rest = json.loads((await rest(port, bob_token)).body)["data"]
    alice_rest = json.loads((await rest(port, alice_token, "bearer")).body)["data"]
    admin_rest = json.loads((await rest(port, admin_token)).body)["data"]
    # ...and alice's was still in the queue after every view of bob's above.
    assert {alice_task, bob_task} <= all_task_ids(admin_rest)

    bob_views = [m["data"] for m in bob.received if m["type"] == "queue_status"]
    assert all(alice_task not in all_task_ids(view) for view in bob_views + [bob_rest])
    assert bob_task in all_task_ids(bob_rest)
    assert alice_task in all_task_ids(alice_rest) and bob_task not in all_task_ids(alice_rest)
    assert all(view["workers"] == seen_by_admin["data"]["workers"] != []
               for view in (bob_rest, replied["data"], alice_rest))
    assert all("owner" not in entry for view in bob_views + [bob_rest, admin_rest]
               for key in ("active_tasks", "scheduled_tasks", "reserved_tasks")
               for entry in view[key])
    for client in (admin, bob):
        client.close()


# -- expiry and refresh -------------------------------------------------------------

async def test_a_socket_whose_token_expires_is_closed_with_4001_token_expired(token_server):
    peer = await AsyncPeer.upgrade(token_server.port, query=query(sign("alice", ttl=3)))

    before, code, reason = await peer.until_close()
    after = await peer.until_ended()

    assert (code, reason) == (close_codes.UNAUTHORIZED, "token expired")
    assert json.loads(before[0][1])["type"] == "queue_status"
    assert after == []


async def test_refresh_with_a_later_token_of_the_same_sub_keeps_the_socket_open_past_the_first_exp(
        token_server, redis_server):
    first = sign("alice", ttl=3)
    later = sign("alice", ttl=120)
    expiring = await WsClient.connect(token_server.port, query=query(first))
    refreshing = await WsClient.connect(token_server.port, query=query(first))

    await refreshing.send({"action": "refresh", "token": later})
    reply = await refreshing.wait_for(lambda m: m["type"] in ("refreshed", "error"))
    # The socket that kept the first token marks the moment the first exp passed.
    assert await expiring.wait_closed() == close_codes.UNAUTHORIZED
    assert expiring.close_reason == "token expired"
    tag = unique_avid("REFRESHED")
    Emitter(redis_server.url).emit(event(tag, "after-first-exp", owner="alice"))

    later_exp = jwt.decode(later, options={"verify_signature": False})["exp"]
    assert reply == {"type": "refreshed", "data": {"exp": later_exp}}
    await refreshing.wait_for(of_task(f"{tag}-after-first-exp"))
    assert refreshing.close_code is None
    refreshing.close()


async def test_refresh_with_another_subs_or_a_forged_token_is_refused_and_the_old_exp_stands(
        token_server, redis_server):
    first = sign("alice", ttl=4)
    client = await WsClient.connect(token_server.port, query=query(first))
    another_subject = "the new token is for another subject; reconnect with it"
    attempts = [
        (sign("root", admin=True, ttl=120), another_subject),
        (sign("bob", ttl=120), another_subject),
        (spliced(first, exp=int(time.time()) + 3600, admin=True),
         "invalid token: Signature verification failed"),
        (unsigned("alice", ttl=3600), "invalid token: The specified alg value is not allowed"),
        (sign("alice", ttl=-30), "token expired"),
    ]

    for token, _ in attempts:
        await client.send({"action": "refresh", "token": token})
    await client.send({"action": "ping"})
    await client.wait_for(lambda m: m["type"] == "pong")
    # The admin token was refused: an unowned event does not reach alice, her marker does.
    tag = unique_avid("REFUSED")
    emitter = Emitter(redis_server.url)
    emitter.emit(event(tag, "nobody"))
    emitter.emit(event(tag, "alice", owner="alice"))
    await client.wait_for(of_task(f"{tag}-alice"))
    code = await client.wait_closed()

    errors = [m["data"] for m in client.received if m["type"] == "error"]
    assert errors == [{"code": "invalid_token", "message": message} for _, message in attempts]
    assert not any(m["type"] == "refreshed" for m in client.received)
    assert task_ids_of(client, tag) == [f"{tag}-alice"]
    assert (code, client.close_reason) == (close_codes.UNAUTHORIZED, "token expired")


async def test_refresh_in_open_mode_replies_auth_disabled(server_port):
    client = await WsClient.connect(server_port)

    await client.send({"action": "refresh", "token": sign("alice")})

    reply = await client.wait_for(lambda m: m["type"] in ("refreshed", "error"))
    assert reply["data"]["code"] == "auth_disabled"
    client.close()


# -- request heads, /metrics, origins ---------------------------------------------------

async def test_a_half_sent_request_line_is_dropped_after_the_header_timeout(token_server):
    reader, writer = await open_stream(token_server.port)

    writer.write(b"GET /ws/tasks/?tok")
    received, _ = await read_stream_until_eof(reader, timeout=30)
    writer.close()

    assert received == b""


async def test_a_request_head_trickled_byte_by_byte_is_dropped_before_it_is_complete(token_server):
    head = upgrade_request(token_server.port, query(sign("alice")))
    reader, writer = await open_stream(token_server.port)
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        for offset in range(len(head)):
            writer.write(head[offset:offset + 1])
            sent += 1
            await asyncio.sleep(0.05)  # the pace of a slowloris, not a wait for an event

    trickling = asyncio.ensure_future(trickle())
    received, _ = await read_stream_until_eof(reader, timeout=60)
    trickling.cancel()
    writer.close()

    assert received == b""
    assert sent < len(head)


async def test_metrics_needs_the_metrics_bearer_token(token_server):
    url = f"http://127.0.0.1:{token_server.port}/metrics"
    fetch = AsyncHTTPClient().fetch

    refused = [await fetch(url, headers=headers, raise_error=False) for headers in (
        {}, bearer("wrong-" + METRICS_TOKEN), bearer(sign("root", admin=True)),
        {"Authorization": METRICS_TOKEN})]
    allowed = await fetch(url, headers=bearer(METRICS_TOKEN), raise_error=False)

    assert [response.code for response in refused] == [401] * 4
    assert all(response.headers["WWW-Authenticate"].startswith("Bearer") for response in refused)
    assert all(b"notify_" not in response.body for response in refused)
    assert allowed.code == 200
    assert b"notify_open_connections" in allowed.body


async def test_a_disallowed_origin_gets_403_even_with_a_valid_token(token_server):
    token = query(sign("root", admin=True))

    foreign = await AsyncPeer.upgrade(token_server.port, query=token,
                                      headers={"Origin": "http://evil.example"})
    allowed = await AsyncPeer.upgrade(token_server.port, query=token,
                                      headers={"Origin": ALLOWED_ORIGIN})

    assert foreign.response.status == 403
    assert "upgrade" not in foreign.response.headers
    assert allowed.response.status == 101
    opcode, payload = await allowed.next_frame()
    assert opcode == OPCODE_TEXT and json.loads(payload)["type"] == "queue_status"
    allowed.close()
