"""Who may read the task socket, seen from a real Chromium: origins, tokens, owners.

Each server lists only its own origin in NOTIFY_ALLOWED_ORIGINS, so its
dashboard page is the allowed one, and a page from a static file server on
another loopback port is the foreign one (a site that tries to read a
victim's tasks through the victim's browser). Events are written to Redis
with the workers' script under a prefix of the test's own, some with an
`owner`; absences are asserted only after a later event the same client may
see has arrived.
"""

import json
import re
import time
import uuid
from typing import NamedTuple, Optional

import jwt
import pytest
import redis
from playwright.sync_api import expect

from notify_server.protocol import task_events as events
from notify_server.protocol.names import Keys
from notify_server.worker.emitter import EMIT_SCRIPT
from tests.support.processes import ARTIFACTS, Child, start_server
from tests.support.static_site import serve_directory
from tests.support.wsframes import free_port

SECRET = "browser-tests-secret-" + "s" * 32

# Records what a raw WebSocket of the page sees, in `window.seen`.
WATCH_SOCKET = """(url) => {
    const seen = { opened: false, errored: false, messages: [], close: null };
    window.seen = seen;
    const socket = new WebSocket(url);
    socket.onopen = () => { seen.opened = true; };
    socket.onerror = () => { seen.errored = true; };
    socket.onmessage = (event) => seen.messages.push(JSON.parse(event.data));
    socket.onclose = (event) => {
        seen.close = { code: event.code, reason: event.reason, wasClean: event.wasClean };
    };
}"""

REFUSED_HANDSHAKE = {"opened": False, "errored": True, "messages": [],
                     "close": {"code": 1006, "reason": "", "wasClean": False}}


class Server(NamedTuple):
    child: Child
    port: int
    prefix: str
    redis_url: str

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def socket_url(self, token: Optional[str] = None) -> str:
        query = f"?token={token}" if token else ""
        return f"ws://127.0.0.1:{self.port}/ws/tasks/{query}"


def start_own_origin_server(redis_url: str, name: str, env: Optional[dict] = None) -> Server:
    """A server whose only allowed origin is its own (its dashboard's), with its own prefix."""
    port, prefix = free_port(), f"auth-{uuid.uuid4().hex[:6]}"
    child, port = start_server(
        redis_url, "--port", str(port), "--prefix", prefix, name=name,
        env={"NOTIFY_ALLOWED_ORIGINS": f"http://127.0.0.1:{port}", **(env or {})})
    return Server(child, port, prefix, redis_url)


@pytest.fixture(scope="module")
def open_server(redis_server):
    server = start_own_origin_server(redis_server.url, "auth-open")
    yield server
    server.child.stop()


@pytest.fixture(scope="module")
def token_server(redis_server):
    server = start_own_origin_server(redis_server.url, "auth-token", env={
        "NOTIFY_AUTH_SECRET": SECRET, "NOTIFY_AUTH_LEEWAY": "0"})
    yield server
    server.child.stop()


@pytest.fixture(scope="module")
def foreign_site(tmp_path_factory):
    """The origin of a blank page served from another port, e.g. http://127.0.0.1:41234."""
    root = tmp_path_factory.mktemp("foreign-origin")
    (root / "index.html").write_text(
        "<!doctype html><meta charset=utf-8><link rel=icon href='data:,'>"
        "<title>a foreign site</title>", encoding="utf-8")
    with serve_directory(root) as origin:
        yield origin


@pytest.fixture
def foreign_page(chromium, foreign_site, request):
    """A page of the foreign site, in a browser context of its own."""
    context = chromium.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{foreign_site}/")
    yield page
    ARTIFACTS.mkdir(exist_ok=True)
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    page.screenshot(path=str(ARTIFACTS / f"{name}-foreign.png"))
    context.close()


def mint(sub: str, seconds: float = 60, **claims) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time() + seconds), **claims}, SECRET,
                      algorithm="HS256")


def emit(server: Server, message: dict, owner: Optional[str] = None) -> None:
    """Write one event as a worker does (protocol section 6), `owner` beside type and data."""
    event = {**message, "owner": owner} if owner is not None else message
    client = redis.Redis.from_url(server.redis_url)
    try:
        client.register_script(EMIT_SCRIPT)(
            keys=[Keys(server.prefix).history_stream, Keys(server.prefix).events_channel],
            args=[json.dumps(event, separators=(",", ":")), 10000])
    finally:
        client.close()


def watch(page, url: str) -> None:
    page.evaluate(WATCH_SOCKET, url)


def wait_for_message(page, task_id: str) -> None:
    page.wait_for_function(
        "(id) => window.seen.messages.some((m) => m.data && m.data.task_id === id)", arg=task_id)


def assert_handshake_refused(page, server: Server) -> None:
    page.wait_for_function("() => window.seen.close !== null")
    assert page.evaluate("() => window.seen") == REFUSED_HANDSHAKE
    server.child.wait_for_line(r"tornado\.access: 403 GET /ws/tasks/", timeout=5)


def open_dashboard(page, server: Server, query: str = "") -> None:
    page.goto(f"{server.origin}/{query}")


# -- cross-site WebSocket hijacking --------------------------------------------------


def test_foreign_page_cannot_open_the_socket_that_the_dashboards_origin_reads(
        foreign_page, page, open_server):
    watch(foreign_page, open_server.socket_url())
    assert_handshake_refused(foreign_page, open_server)

    open_dashboard(page, open_server)
    watch(page, open_server.socket_url())
    page.wait_for_function("() => window.seen.messages.length > 0")
    task_id = f"hijack-{uuid.uuid4().hex[:8]}"
    emit(open_server, events.task_started(task_id, "HIJACK-1"))

    wait_for_message(page, task_id)
    assert foreign_page.evaluate("() => window.seen") == REFUSED_HANDSHAKE


def test_foreign_page_holding_a_valid_token_still_cannot_read_events(
        foreign_page, page, token_server):
    token = mint("alice")
    watch(foreign_page, token_server.socket_url(token))
    assert_handshake_refused(foreign_page, token_server)

    open_dashboard(page, token_server)
    watch(page, token_server.socket_url(token))
    page.wait_for_function("() => window.seen.messages.length > 0")
    task_id = f"stolen-{uuid.uuid4().hex[:8]}"
    emit(token_server, events.task_started(task_id, "STOLEN-1"), owner="alice")

    wait_for_message(page, task_id)
    assert page.evaluate("() => window.seen.close") is None
    assert foreign_page.evaluate("() => window.seen") == REFUSED_HANDSHAKE


@pytest.mark.parametrize("token, reason", [
    (None, "token required"),
    (mint("alice", seconds=-5), "token expired"),
    (jwt.encode({"sub": "alice", "exp": int(time.time()) + 600}, "another-secret-" + "x" * 32,
                algorithm="HS256"), re.compile(r"^invalid token: .")),
], ids=["missing", "expired", "foreign-signature"])
def test_allowed_page_without_a_valid_token_gets_a_4001_close_and_nothing_else(
        page, token_server, token, reason):
    open_dashboard(page, token_server)
    watch(page, token_server.socket_url(token))

    page.wait_for_function("() => window.seen.close !== null")
    seen = page.evaluate("() => window.seen")
    assert seen["messages"] == []
    assert seen["close"]["code"] == 4001 and seen["close"]["wasClean"] is True
    if isinstance(reason, str):
        assert seen["close"]["reason"] == reason
    else:
        assert reason.match(seen["close"]["reason"]), seen["close"]["reason"]


# -- the dashboard in token mode ---------------------------------------------------------


def banner(page):
    return page.locator("#auth-banner")


def started_note(page, task_id: str):
    return page.locator(f'#notifications li[data-task-id="{task_id}"][data-kind="started"]')


def test_dashboard_without_a_token_says_one_is_required_and_stops_reconnecting(
        page, token_server):
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    open_dashboard(page, token_server)

    expect(banner(page)).to_be_visible()
    expect(page.locator("#auth-text")).to_contain_text("Token required")
    expect(page.locator("#auth-text")).to_contain_text("?token=")
    expect(page.locator("#auth-reason")).to_have_text("Server: token required (close code 4001)")
    expect(page.locator("#connection")).to_have_attribute("data-state", "closed")
    # Backoff would have reconnected several times within this (500 ms, then 1 s, ...).
    page.wait_for_timeout(2000)
    assert sockets == [token_server.socket_url()]


def test_dashboard_with_a_token_shows_its_owners_tasks_only_and_hides_the_token(
        page, token_server):
    token = mint("alice")
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    open_dashboard(page, token_server, f"?token={token}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")

    assert page.url == f"{token_server.origin}/"
    assert token not in page.content()
    run = uuid.uuid4().hex[:6]
    alice_first, bob, alice_later = f"alice-1-{run}", f"bob-1-{run}", f"alice-2-{run}"
    emit(token_server, events.task_started(alice_first, "ALICE-1"), owner="alice")
    emit(token_server, events.task_started(bob, "BOB-1"), owner="bob")
    emit(token_server, events.task_started(alice_later, "ALICE-2"), owner="alice")

    expect(started_note(page, alice_later)).to_have_count(1)
    expect(started_note(page, alice_first)).to_have_count(1)
    expect(page.locator(f'[data-task-id="{bob}"]')).to_have_count(0)
    expect(banner(page)).to_be_hidden()
    assert sockets == [token_server.socket_url(token)]


def test_dashboard_says_when_its_token_has_expired_and_stops_reconnecting(
        page, token_server):
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    open_dashboard(page, token_server, f"?token={mint('alice', seconds=3)}")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(banner(page)).to_be_hidden()

    expect(banner(page)).to_be_visible(timeout=10_000)
    expect(page.locator("#auth-text")).to_contain_text("Token expired")
    expect(page.locator("#auth-reason")).to_have_text("Server: token expired (close code 4001)")
    expect(page.locator("#connection")).to_have_attribute("data-state", "closed")
    page.wait_for_timeout(2000)
    assert len(sockets) == 1


# -- notify-client.js getToken against the server ---------------------------------------------


def test_client_refreshes_a_short_lived_token_and_keeps_its_socket_past_the_first_exp(
        page, token_server):
    expiries = []

    def mint_short_lived() -> str:
        token = mint("alice", seconds=4)
        expiries.append(jwt.decode(token, options={"verify_signature": False})["exp"])
        return token

    page.expose_function("mintToken", mint_short_lived)
    open_dashboard(page, token_server)
    page.evaluate("""async () => {
        const { NotifyClient } = await import('/static/notify-client.js');
        Object.assign(window, { tokenCalls: 0, states: [], started: [], refreshed: [] });
        const client = new NotifyClient(undefined, {
            getToken: async () => { window.tokenCalls += 1; return window.mintToken(); },
        });
        client.on('state', ({ state, code, reason }) => window.states.push([state, code, reason]));
        client.on('task_started', (data) => window.started.push(data.task_id));
        client.on('refreshed', (data) => window.refreshed.push(data.exp));
        window.client = client.connect();
        await client.getQueueStatus();
    }""")

    first_exp = expiries[0]
    page.wait_for_function("(exp) => Date.now() / 1000 > exp", arg=first_exp + 1.5,
                           timeout=15_000)
    task_id = f"refreshed-{uuid.uuid4().hex[:8]}"
    emit(token_server, events.task_started(task_id, "REFRESH-1"), owner="alice")

    page.wait_for_function("(id) => window.started.includes(id)", arg=task_id)
    assert page.evaluate("() => window.states") == [
        ["connecting", None, None], ["open", None, None]]
    assert page.evaluate("() => window.tokenCalls") >= 2
    refreshed = page.evaluate("() => window.refreshed")
    assert refreshed and refreshed[0] > first_exp
    assert page.evaluate("() => client.state") == "open"
