"""notify-client.js in a real Chromium: against the server, and against a scripted socket.

The scripted socket (Playwright's `route_web_socket`) plays a server that
drops the connection or stays silent on cue, which a real one does not do
on demand.
"""

import json
import re

import pytest

from tests.support.tasks import submit, unique_avid

MOCK_SOCKET = re.compile(r"/mock/ws/tasks/")


@pytest.fixture
def same_origin_page(page, server_port):
    """A page of the server (the dashboard), so modules import from /static/.

    A page made up by the test (`route.fulfill`) would not do: Chromium's
    local-network-access checks block its sockets to 127.0.0.1.
    """
    page.goto(f"http://127.0.0.1:{server_port}/")
    return page


def start_client(page, url=None, subscription=None, **options) -> None:
    """`window.client`, connected (subscribed first, if given); its state
    changes go to `window.states` and every task event to `window.events` as
    [type, task_id, id]."""
    page.evaluate("""async ([url, subscription, options]) => {
        const { NotifyClient } = await import('/static/notify-client.js');
        const client = url ? new NotifyClient(url, options) : new NotifyClient(undefined, options);
        window.states = [];
        window.events = [];
        client.on('state', (detail) => window.states.push(detail));
        for (const type of ['task_started', 'task_progress', 'task_completed', 'task_failed']) {
            client.on(type, (data, message) => window.events.push([type, data.task_id, message.id]));
        }
        if (subscription) client.subscribe(subscription);
        window.client = client.connect();
    }""", [url, subscription, options])


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
