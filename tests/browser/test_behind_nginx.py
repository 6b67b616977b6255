"""deploy/nginx.conf in a real nginx, in front of two real servers.

Browsers reach the app at the root and under the /tasks-monitor/ prefix;
sockets are spread over both servers, and each server relays every task event.
"""

import json
import re
import uuid
from types import SimpleNamespace

import pytest
from playwright.sync_api import expect

from tests.support.http_probe import get, wait_for_first_poll
from tests.support.nginx import Nginx
from tests.support.processes import start_server
from tests.support.tasks import submit, unique_avid
from tests.support.wsframes import free_port


@pytest.fixture(scope="module")
def proxy(redis_server, worker):
    """nginx on 127.0.0.1:`port` in front of two servers run with --xheaders."""
    servers, nginx = [], None
    try:
        for number in (1, 2):
            servers.append(start_server(redis_server.url, "--xheaders", name=f"proxied-{number}"))
        nginx = Nginx(free_port(), [port for _, port in servers])
        for _, port in servers:
            wait_for_first_poll(port)
        yield SimpleNamespace(port=nginx.port, servers=servers)
    finally:
        if nginx is not None:
            assert nginx.stop() == 0
        for child, _ in servers:
            assert child.stop() == 0


def logged_address(servers, probe: str) -> str:
    """The client address in the access-log line of the request carrying
    `?probe=<probe>`, from whichever server handled it."""
    pattern = rf"\?probe={probe} \(([^)]+)\)"
    for _ in range(100):
        for child, _ in servers:
            try:
                return child.wait_for_line(pattern, timeout=0.1).group(1)
            except AssertionError:
                continue
    raise AssertionError(f"no server logged probe {probe}")


def test_dashboard_under_the_path_prefix_receives_task_events(page, proxy, producer):
    sockets = []
    page.on("websocket", lambda socket: sockets.append(socket.url))
    page.goto(f"http://127.0.0.1:{proxy.port}/tasks-monitor/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")

    avid = unique_avid("PREFIX")
    task_id = submit(producer, avid, seconds=0.3)

    completed = page.locator(f'#notifications li[data-task-id="{task_id}"][data-kind="completed"]')
    expect(completed.locator(".message")).to_have_text(f"{avid} downloaded")
    assert sockets == [f"ws://127.0.0.1:{proxy.port}/tasks-monitor/ws/tasks/"]
    default_url = page.evaluate(
        "async () => new (await import('./static/notify-client.js')).NotifyClient().url")
    assert default_url == f"ws://127.0.0.1:{proxy.port}/tasks-monitor/ws/tasks/"


def test_sockets_through_nginx_reach_both_servers_and_each_receives_task_events(
        page, proxy, producer):
    page.goto(f"http://127.0.0.1:{proxy.port}/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    probe = uuid.uuid4().hex[:8]
    page.evaluate("""async ([base, probe]) => {
        window.completed = [[], [], [], []];
        await Promise.all(window.completed.map((seen, n) => new Promise((opened) => {
            const ws = new WebSocket(`${base}/ws/tasks/?probe=${probe}-${n}`);
            ws.onmessage = (e) => {
                const message = JSON.parse(e.data);
                if (message.type === 'task_completed') seen.push(message.data.task_id);
            };
            ws.onopen = opened;
        })));
    }""", [f"ws://127.0.0.1:{proxy.port}", probe])

    task_id = submit(producer, unique_avid("SPREAD"), seconds=0.2)

    page.wait_for_function("(id) => window.completed.every((seen) => seen.includes(id))",
                           arg=task_id)
    served_by = {number: [] for number in range(len(proxy.servers))}
    for n in range(4):
        logged_address(proxy.servers, f"{probe}-{n}")
        for number, (child, _) in enumerate(proxy.servers):
            if any(f"?probe={probe}-{n} " in line for line in child.output):
                served_by[number].append(n)
    assert all(served_by.values()), f"least_conn should use both servers: {served_by}"
    expect(page.locator(f'#notifications li[data-task-id="{task_id}"][data-kind="completed"]')
           ).to_have_count(1)


def test_rest_and_static_files_work_through_nginx_and_metrics_stay_private(proxy):
    for path in ("/api/tasks/queue/status", "/tasks-monitor/api/tasks/queue/status"):
        response = get(proxy.port, path)
        body = json.loads(response.body)
        assert response.status == 200 and body["code"] == 200, (path, body)
        assert {"active_tasks", "scheduled_tasks", "reserved_tasks"} <= set(body["data"])

    script = get(proxy.port, "/tasks-monitor/static/notify-client.js")
    assert script.status == 200
    assert script.getheader("Content-Type").startswith("text/javascript")
    assert b"export class NotifyClient" in script.body

    for path in ("/metrics", "/tasks-monitor/metrics"):
        assert get(proxy.port, path).status == 403, path

    bare = get(proxy.port, "/tasks-monitor")
    assert bare.status == 301
    assert re.fullmatch(rf"http://127\.0\.0\.1:{proxy.port}/tasks-monitor/",
                        bare.getheader("Location"))


def test_with_xheaders_servers_log_the_address_nginx_saw_not_a_forged_one(proxy):
    forged = {"X-Real-IP": "198.51.100.7", "X-Forwarded-For": "198.51.100.7"}

    direct_probe = uuid.uuid4().hex[:8]
    child, server_port = proxy.servers[0]
    assert get(server_port, f"/api/tasks/queue/status?probe={direct_probe}", forged).status == 200
    assert logged_address([(child, server_port)], direct_probe) == "198.51.100.7"

    proxied_probe = uuid.uuid4().hex[:8]
    assert get(proxy.port, f"/api/tasks/queue/status?probe={proxied_probe}", forged).status == 200
    assert logged_address(proxy.servers, proxied_probe) == "127.0.0.1"


def test_a_page_on_another_origin_imports_the_client_from_a_server_and_connects(page, proxy):
    """As a web app on its own origin would use the client: the page comes from
    nginx, the module and socket from one server directly (another origin).
    The page is /healthz: the dashboard's own CSP allows only its origin."""
    _, server_port = proxy.servers[0]
    page.goto(f"http://127.0.0.1:{proxy.port}/healthz")
    status = page.evaluate("""async (moduleUrl) => {
        const { NotifyClient } = await import(moduleUrl);
        const client = new NotifyClient().connect();
        window.crossOriginUrl = client.url;
        const status = await client.getQueueStatus();
        client.close();
        return status;
    }""", f"http://127.0.0.1:{server_port}/static/notify-client.js")

    assert page.evaluate("() => window.crossOriginUrl") == f"ws://127.0.0.1:{server_port}/ws/tasks/"
    assert {"active_tasks", "scheduled_tasks", "reserved_tasks"} <= set(status)
