"""notify-client.js in a real Chromium: against the server, and against a scripted socket.

The scripted socket (Playwright's `route_web_socket`) plays a server that
drops the connection or stays silent on cue, which a real one does not do
on demand.
"""

import json
import re
import time
import uuid

import jwt
import pytest

from tests.support.tasks import submit, unique_avid

MOCK_SOCKET = re.compile(r"/mock/ws/tasks/")
# The scripted socket checks no signature: any key makes a well-formed JWT.
MOCK_KEY = "mock-socket-key-not-checked-by-anyone"


def token(sub: str, seconds: float) -> str:
    """A JWT for `sub` expiring `seconds` from now, unlike any other (its own `jti`)."""
    return jwt.encode({"sub": sub, "exp": int(time.time() + seconds), "jti": uuid.uuid4().hex},
                      MOCK_KEY, algorithm="HS256")


def expiry(token: str) -> int:
    return jwt.decode(token, options={"verify_signature": False})["exp"]


@pytest.fixture
def same_origin_page(page, server_port):
    """A page of the server (the dashboard), so modules import from /static/.

    A page made up by the test (`route.fulfill`) would not do: Chromium's
    local-network-access checks block its sockets to 127.0.0.1.
    """
    page.goto(f"http://127.0.0.1:{server_port}/")
    return page


def start_client(page, url=None, subscription=None, tokens=None, **options) -> None:
    """`window.client`, connected (subscribed first, if given); its state
    changes go to `window.states`, every task event to `window.events` as
    [type, task_id, id] and every `error` to `window.errors`.

    With `tokens`, its getToken gives them in turn (the last one again and
    again; None rejects with "signed out"), counted in `window.tokenCalls`.
    """
    page.evaluate("""async ([url, subscription, tokens, options]) => {
        const { NotifyClient } = await import('/static/notify-client.js');
        window.tokenCalls = 0;
        if (tokens) {
            options.getToken = async () => {
                const token = tokens[Math.min(window.tokenCalls, tokens.length - 1)];
                window.tokenCalls += 1;
                if (token === null) throw new Error('signed out');
                return token;
            };
        }
        const client = url ? new NotifyClient(url, options) : new NotifyClient(undefined, options);
        window.states = [];
        window.events = [];
        window.errors = [];
        client.on('state', (detail) => window.states.push(detail));
        client.on('error', (data) => window.errors.push(data));
        for (const type of ['task_started', 'task_progress', 'task_completed', 'task_failed']) {
            client.on(type, (data, message) => window.events.push([type, data.task_id, message.id]));
        }
        if (subscription) client.subscribe(subscription);
        window.client = client.connect();
    }""", [url, subscription, tokens, options])


def test_client_resolves_queue_status_and_calls_back_on_each_task_event(
        same_origin_page, server_port, producer):
    page = same_origin_page
    start_client(page)

    status = page.evaluate("() => client.getQueueStatus()")
    assert {"active_tasks", "scheduled_tasks", "reserved_tasks", "workers", "stale"} <= set(status)
    assert page.evaluate("() => client.url") == f"ws://127.0.0.1:{server_port}/ws/tasks/"

    task_id = submit(producer, unique_avid("CLIENT"), seconds=0.3)
    page.wait_for_function(
        "(id) => window.events.some(([type, taskId]) => type === 'task_completed' && taskId === id)",
        arg=task_id)
    kinds = [kind for kind, event_task, _ in page.evaluate("() => window.events")
             if event_task == task_id]
    assert kinds == ["task_started"] + ["task_progress"] * 10 + ["task_completed"]
    assert re.fullmatch(r"\d+-\d+", page.evaluate("() => client.lastEventId"))

    outcome = page.evaluate("""async () => {
        const pending = client.getQueueStatus();
        client.close();
        try { await pending; return 'resolved'; } catch (error) { return error.message; }
    }""")
    assert outcome == "NotifyClient closed"
    assert page.evaluate("() => client.state") == "closed"


def test_client_reconnects_after_a_drop_resumes_after_the_last_event_and_resubscribes(
        same_origin_page, server_port):
    page = same_origin_page
    urls, received = [], []
    started = {"id": "1700000000000-3", "type": "task_started",
               "data": {"task_id": "t1", "avid": "A-1", "status": "started"}}
    completed = {"id": "1700000000000-4", "type": "task_completed",
                 "data": {"task_id": "t1", "avid": "A-1", "status": "success", "message": "done"}}

    def scripted_server(socket):
        """First connection: an event, then a shutdown close; the second: the next event.
        Each answers the client's first frame, so nothing races the close."""
        connection = len(urls) + 1
        urls.append(socket.url)

        def answer(frame):
            received.append((connection, json.loads(frame)))
            if connection == 1:
                socket.send(json.dumps(started))
                socket.close(code=1001, reason="server shutting down")
            else:
                socket.send(json.dumps(completed))

        socket.on_message(answer)

    page.route_web_socket(MOCK_SOCKET, scripted_server)
    start_client(page, f"ws://127.0.0.1:{server_port}/mock/ws/tasks/", {"avids": ["A-1"]},
                 minDelay=50, maxDelay=200)

    page.wait_for_function("() => window.events.length === 2")
    assert urls == [f"ws://127.0.0.1:{server_port}/mock/ws/tasks/",
                    f"ws://127.0.0.1:{server_port}/mock/ws/tasks/?last_event_id=1700000000000-3"]
    assert received == [(1, {"action": "subscribe", "avids": ["A-1"]}),
                        (2, {"action": "subscribe", "avids": ["A-1"]})]
    states = page.evaluate("() => window.states")
    assert [s["state"] for s in states] == ["connecting", "open", "reconnecting", "connecting", "open"]
    dropped = states[2]
    assert dropped["code"] == 1001 and 0 <= dropped["delay"] <= 50
    assert page.evaluate("() => client.lastEventId") == "1700000000000-4"


def test_client_pings_a_silent_socket_and_replaces_it_when_nothing_answers(
        same_origin_page, server_port):
    page = same_origin_page
    urls, received = [], []

    def silent_server(socket):
        urls.append(socket.url)
        socket.on_message(lambda message: received.append(message))

    page.route_web_socket(MOCK_SOCKET, silent_server)
    start_client(page, f"ws://127.0.0.1:{server_port}/mock/ws/tasks/", heartbeat=300, minDelay=10)

    page.wait_for_function("() => window.states.filter((s) => s.state === 'open').length >= 2")
    assert json.loads(received[0]) == {"action": "ping"}
    assert len(urls) >= 2
    dropped = next(s for s in page.evaluate("() => window.states") if s["state"] == "reconnecting")
    assert dropped["code"] == 4000


def test_reconnect_delays_are_full_jitter_under_a_doubling_capped_ceiling(same_origin_page):
    delays = same_origin_page.evaluate("""async () => {
        const { reconnectDelay } = await import('/static/notify-client.js');
        const attempts = [0, 1, 2, 3, 4, 5, 10, 60];
        const samples = Array.from({ length: 2000 }, () => reconnectDelay(3, 500, 15000));
        return {
            highest: attempts.map((n) => reconnectDelay(n, 500, 15000, () => 1)),
            lowest: attempts.map((n) => reconnectDelay(n, 500, 15000, () => 0)),
            samples: [Math.min(...samples), Math.max(...samples)],
        };
    }""")
    assert delays["highest"] == [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]
    assert delays["lowest"] == [0] * 8
    low, high = delays["samples"]
    assert 0 <= low < 500 and 3500 < high <= 4000


def test_socket_url_follows_the_page_scheme_and_path_prefix(same_origin_page):
    urls = same_origin_page.evaluate("""async () => {
        const { socketUrl } = await import('/static/notify-client.js');
        return [
            socketUrl('ws/tasks/', 'https://example.com/tasks-monitor/'),
            socketUrl('ws/tasks/', 'http://example.com:8080/'),
            socketUrl('../ws/tasks/', 'https://example.com/tasks-monitor/static/notify-client.js'),
        ];
    }""")
    assert urls == ["wss://example.com/tasks-monitor/ws/tasks/", "ws://example.com:8080/ws/tasks/",
                    "wss://example.com/tasks-monitor/ws/tasks/"]


def test_client_asks_for_a_token_before_every_connect_and_after_a_4001_close(
        same_origin_page, server_port):
    page = same_origin_page
    urls = []
    started = {"id": "1700000000000-7", "type": "task_started",
               "data": {"task_id": "t7", "avid": "A-7", "status": "started"}}

    def scripted_server(socket):
        """First connection: an event, then the server's close for an expired token."""
        connection = len(urls) + 1
        urls.append(socket.url)

        def answer(frame):
            if connection == 1:
                socket.send(json.dumps(started))
                socket.close(code=4001, reason="token expired")

        socket.on_message(answer)

    page.route_web_socket(MOCK_SOCKET, scripted_server)
    start_client(page, f"ws://127.0.0.1:{server_port}/mock/ws/tasks/", {"avids": ["A-7"]},
                 tokens=["opaque-1", "opaque-2"], minDelay=50, maxDelay=200)

    page.wait_for_function("() => window.states.filter((s) => s.state === 'open').length === 2")
    base = f"ws://127.0.0.1:{server_port}/mock/ws/tasks/"
    assert urls == [f"{base}?token=opaque-1",
                    f"{base}?last_event_id=1700000000000-7&token=opaque-2"]
    assert page.evaluate("() => window.tokenCalls") == 2
    states = page.evaluate("() => window.states")
    assert [s["state"] for s in states] == [
        "connecting", "open", "reconnecting", "connecting", "open"]
    assert states[2]["code"] == 4001 and states[2]["reason"] == "token expired"
    assert 0 <= states[2]["delay"] <= 50


def test_client_backs_off_and_reports_each_failure_while_get_token_rejects(
        same_origin_page, server_port):
    page = same_origin_page
    urls = []
    page.route_web_socket(MOCK_SOCKET, lambda socket: urls.append(socket.url))
    start_client(page, f"ws://127.0.0.1:{server_port}/mock/ws/tasks/",
                 tokens=[None, None, None, "opaque-ok"], minDelay=50, maxDelay=1000)

    page.wait_for_function("() => client.state === 'open'")
    assert urls == [f"ws://127.0.0.1:{server_port}/mock/ws/tasks/?token=opaque-ok"]
    assert page.evaluate("() => window.errors") == \
        [{"code": "token_unavailable", "message": "signed out"}] * 3
    states = page.evaluate("() => window.states")
    assert [s["state"] for s in states] == (
        ["connecting", "reconnecting"] * 3 + ["connecting", "open"])
    waits = [s for s in states if s["state"] == "reconnecting"]
    assert [s["attempt"] for s in waits] == [1, 2, 3]
    assert all(s["code"] is None and s["reason"] == "no token" for s in waits)
    for wait, ceiling in zip(waits, [50, 100, 200]):
        assert 0 <= wait["delay"] <= ceiling


def test_client_refreshes_its_token_on_the_open_socket_before_it_expires(
        same_origin_page, server_port):
    page = same_origin_page
    urls, refreshes = [], []
    first, refused, accepted = token("alice", 10), token("alice", 10), token("alice", 3600)
    accepted_exp = expiry(accepted)

    def scripted_server(socket):
        """Refuses the first refresh (invalid_token) and accepts the second."""
        urls.append(socket.url)

        def answer(frame):
            action = json.loads(frame)
            refreshes.append((time.time(), action))
            if len(refreshes) == 1:
                reply = {"type": "error", "data": {"code": "invalid_token", "message": "bad"}}
            else:
                reply = {"type": "refreshed", "data": {"exp": accepted_exp}}
            socket.send(json.dumps(reply))

        socket.on_message(answer)

    page.route_web_socket(MOCK_SOCKET, scripted_server)
    start_client(page, f"ws://127.0.0.1:{server_port}/mock/ws/tasks/",
                 tokens=[first, refused, accepted, "never-asked-for"])

    page.wait_for_function("() => window.tokenCalls >= 3", timeout=15_000)
    page.wait_for_function("() => window.errors.length === 1")
    first_exp = expiry(first)
    assert [action for _, action in refreshes] == [
        {"action": "refresh", "token": refused}, {"action": "refresh", "token": accepted}]
    assert all(at < first_exp for at, _ in refreshes), \
        f"refreshed at {[at for at, _ in refreshes]}, after the token's exp {first_exp}"
    assert refreshes[1][0] - refreshes[0][0] >= 0.9, "a refused refresh was retried at once"
    assert urls == [f"ws://127.0.0.1:{server_port}/mock/ws/tasks/?token={first}"]
    assert [s["state"] for s in page.evaluate("() => window.states")] == ["connecting", "open"]
    page.wait_for_timeout(500)
    assert page.evaluate("() => window.tokenCalls") == 3, "refreshed again long before the new exp"


def test_token_expiry_is_read_from_the_payload_and_refresh_comes_before_it(same_origin_page):
    long_lived, short_lived = token("ålice", 3600), token("bob", 4)
    result = same_origin_page.evaluate("""async ([longLived, shortLived]) => {
        const { tokenExpiry, refreshDelay } = await import('/static/notify-client.js');
        return {
            expiries: [tokenExpiry(longLived), tokenExpiry(shortLived), tokenExpiry('opaque'),
                       tokenExpiry('a.!!!.c'), tokenExpiry('a.e30.c')],
            delays: [refreshDelay(1700003600, 1700000000000),
                     refreshDelay(1700000004, 1700000000000),
                     refreshDelay(1699999999, 1700000000000), refreshDelay(1e12, 0)],
        };
    }""", [long_lived, short_lived])
    assert result["expiries"][:2] == [expiry(long_lived), expiry(short_lived)]
    assert result["expiries"][2:] == [None, None, None]
    assert result["delays"] == [3_570_000, 3200, 0, 2**31 - 1]


def test_client_delivers_the_event_bridges_messages_and_resumes_after_a_worker_event(
        same_origin_page, server_port):
    page = same_origin_page
    urls = []
    status = {"active_tasks": [], "scheduled_tasks": [], "reserved_tasks": [], "workers": [],
              "updated_at": 1700000000.0, "stale": False,
              "queues": [{"name": "celery", "waiting": 2}],
              "worker_states": [{"name": "w@h", "online": True, "last_heartbeat": 1699999999.0}]}
    bridge_events = [
        {"id": "1700000000000-1", "type": "task_received",
         "data": {"task_id": "t1", "avid": "A-1", "status": "received", "worker": "w@h"}},
        {"id": "1700000000000-2", "type": "task_rejected",
         "data": {"task_id": "t2", "avid": "A-2", "status": "rejected", "message": "no"}},
        {"id": "1700000000000-3", "type": "worker_online",
         "data": {"worker": "w2@h", "time": 1700000000.5}},
        {"id": "1700000000000-4", "type": "worker_offline",
         "data": {"worker": "w@h", "time": 1700000001.0, "reason": "shutdown"}},
    ]

    def bridge_server(socket):
        """First connection: the status asked for, the bridge's events, then a shutdown close."""
        urls.append(socket.url)
        if len(urls) > 1:
            return

        def answer(frame):
            socket.send(json.dumps({"type": "queue_status", "data": status}))
            for event in bridge_events:
                socket.send(json.dumps(event))
            socket.close(code=1001, reason="server shutting down")

        socket.on_message(answer)

    page.route_web_socket(MOCK_SOCKET, bridge_server)
    start_client(page, f"ws://127.0.0.1:{server_port}/mock/ws/tasks/", minDelay=50, maxDelay=200)
    received = page.evaluate("""async () => {
        window.bridge = [];
        for (const type of ['task_received', 'task_rejected', 'worker_online', 'worker_offline']) {
            client.on(type, (data, message) => window.bridge.push({ type, data, id: message.id }));
        }
        return client.getQueueStatus();
    }""")

    assert received == status
    page.wait_for_function("() => window.states.filter((s) => s.state === 'open').length === 2")
    assert page.evaluate("() => window.bridge") == [
        {"type": event["type"], "data": event["data"], "id": event["id"]} for event in bridge_events]
    assert urls[1].endswith("?last_event_id=1700000000000-4")


# -- task records ------------------------------------------------------------------

def wait_for_completion(page, task_id: str) -> None:
    page.wait_for_function(
        "(id) => window.events.some(([type, taskId]) => type === 'task_completed' && taskId === id)",
        arg=task_id)


def test_client_gets_a_tasks_record_and_null_for_an_unknown_task(
        same_origin_page, producer):
    page = same_origin_page
    start_client(page)
    avid = unique_avid("RECORD")
    task_id = submit(producer, avid, seconds=0.2)
    wait_for_completion(page, task_id)

    record, unknown = page.evaluate("""async (id) => [
        await client.getTask(id), await client.getTask('no-such-task-' + id)]""", task_id)
    assert unknown is None
    assert record["task_id"] == task_id and record["avid"] == avid
    assert record["status"] == "success" and record["message"] == f"{avid} downloaded"
    assert record["name"] == "notify_server.demo.download"
    assert [event["type"] for event in record["events"]] == \
        ["task_started"] + ["task_progress"] * 10 + ["task_completed"]
    assert record["last_id"] == record["events"][-1]["id"]


def test_client_lists_records_page_by_page_and_rejects_a_bad_filter_with_the_servers_reason(
        same_origin_page, producer):
    page = same_origin_page
    start_client(page)
    base = unique_avid("LIST")
    first = submit(producer, f"{base}-1", seconds=0.1)
    wait_for_completion(page, first)
    second = submit(producer, f"{base}-2", seconds=0.1)
    wait_for_completion(page, second)

    pages = page.evaluate("""async (q) => {
        const one = await client.listTasks({ q, limit: 1, status: 'success', name: null });
        const two = await client.listTasks({ q, limit: 1, cursor: one.next });
        const all = await client.listTasks({ q });
        let refused;
        try { await client.listTasks({ status: 'lost' }); } catch (error) {
            refused = { status: error.status, message: error.message };
        }
        return { one, two, all, refused };
    }""", base)
    assert [t["task_id"] for t in pages["one"]["tasks"]] == [second]
    assert pages["one"]["next"]
    assert [t["task_id"] for t in pages["two"]["tasks"]] == [first]
    assert [t["task_id"] for t in pages["all"]["tasks"]] == [second, first]
    assert pages["all"]["next"] is None
    assert pages["refused"]["status"] == 400
    assert pages["refused"]["message"].startswith("400 status: one of received, started")


def test_subscribe_resolves_with_the_records_of_the_named_tasks_before_their_later_events(
        same_origin_page, producer):
    page = same_origin_page
    start_client(page)
    done = submit(producer, unique_avid("SUBDONE"), seconds=0.1)
    wait_for_completion(page, done)
    running = submit(producer, unique_avid("SUBRUN"), seconds=2.0)
    page.wait_for_function(
        "(id) => window.events.some(([type, taskId]) => type === 'task_progress' && taskId === id)",
        arg=running)

    records = page.evaluate("""async (ids) => {
        window.taskMessages = [];
        client.on('task', (data) => window.taskMessages.push(data.task_id));
        window.afterRecords = window.events.length;
        return client.subscribe({ task_ids: ids });
    }""", [done, running, "never-submitted"])
    by_id = {r["task_id"]: r for r in records}
    assert sorted(by_id) == sorted([done, running]), "a record each, none for the unknown id"
    assert by_id[done]["status"] == "success"
    assert by_id[running]["status"] == "progress" and by_id[running]["finished_at"] is None
    assert page.evaluate("() => window.taskMessages") == [r["task_id"] for r in records]

    wait_for_completion(page, running)
    later = page.evaluate("() => window.events.slice(window.afterRecords)")
    ids = [event_id for _, task_id, event_id in later if task_id == running]
    assert all(_id_after(event_id, by_id[running]["last_id"]) for event_id in ids), \
        "an event the record already showed was sent again"
    assert [kind for kind, task_id, _ in later if task_id == running][-1] == "task_completed"


def _id_after(event_id: str, last_id: str) -> bool:
    return tuple(map(int, event_id.split("-"))) > tuple(map(int, last_id.split("-")))


def test_subscribe_collects_only_its_tasks_records_up_to_the_pong_of_its_own_ping(
        same_origin_page, server_port):
    """A scripted server answers the subscribe with two records, one of them
    of a task not named, then the ping with a pong; before it, the client's
    promise must still be pending."""
    page = same_origin_page
    frames = []
    record = {"task_id": "t1", "avid": "A-1", "status": "success", "events": []}
    other = {"task_id": "t9", "avid": "A-9", "status": "failed", "events": []}

    def scripted_server(socket):
        def answer(frame):
            action = json.loads(frame)
            frames.append(action)
            if action["action"] == "subscribe" and action.get("task_ids"):
                socket.send(json.dumps({"type": "task", "data": record}))
                socket.send(json.dumps({"type": "task", "data": other}))
            elif action["action"] == "ping":
                socket.send(json.dumps({"type": "pong", "data": {"time": time.time()}}))

        socket.on_message(answer)

    page.route_web_socket(MOCK_SOCKET, scripted_server)
    start_client(page, f"ws://127.0.0.1:{server_port}/mock/ws/tasks/")
    result = page.evaluate("""async () => {
        const byAvid = await client.subscribe({ avids: ['A-1'] });
        const byId = await client.subscribe({ task_ids: ['t1', 't2'] });
        return { byAvid, byId };
    }""")
    assert result == {"byAvid": [], "byId": [record]}
    assert frames == [{"action": "subscribe", "avids": ["A-1"]},
                      {"action": "subscribe", "task_ids": ["t1", "t2"]}, {"action": "ping"}]


def test_rest_url_follows_the_socket_urls_scheme_and_path_prefix(same_origin_page):
    urls = same_origin_page.evaluate("""async () => {
        const { restUrl } = await import('/static/notify-client.js');
        return [restUrl('wss://example.com/tasks-monitor/ws/tasks/?token=x'),
                restUrl('ws://example.com:8080/ws/tasks'),
                restUrl('ws://example.com/sockets/tasks')];
    }""")
    assert urls == ["https://example.com/tasks-monitor/api/tasks/",
                    "http://example.com:8080/api/tasks/", "http://example.com/sockets/api/tasks/"]


def test_after_resync_a_reconnect_starts_fresh_instead_of_earning_a_second_resync(
        same_origin_page, server_port):
    """The id a `resync` answered is gone from the history: resuming from it
    again (a reconnect before the next event) could only earn another one."""
    page = same_origin_page
    urls = []
    resync = {"type": "resync", "data": {"reason": "event 1700000000000-3 is not in the history"}}
    marker = {"id": "1700000000000-9", "type": "task_started",
              "data": {"task_id": "t9", "avid": "A-9", "status": "started"}}

    def scripted_server(socket):
        connection = len(urls) + 1
        urls.append(socket.url)
        if connection == 1:
            socket.send(json.dumps(resync))
            socket.close(code=1001, reason="server shutting down")
        else:
            socket.send(json.dumps(marker))

    page.route_web_socket(MOCK_SOCKET, scripted_server)
    start_client(page, f"ws://127.0.0.1:{server_port}/mock/ws/tasks/",
                 lastEventId="1700000000000-3", minDelay=50, maxDelay=200)
    page.wait_for_function("() => window.events.length === 1")
    assert urls == [f"ws://127.0.0.1:{server_port}/mock/ws/tasks/?last_event_id=1700000000000-3",
                    f"ws://127.0.0.1:{server_port}/mock/ws/tasks/"]
    assert page.evaluate("() => client.lastEventId") == "1700000000000-9"
