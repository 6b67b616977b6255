"""The seed document's own Vue and React components, built unchanged, in a real Chromium.

tests/browser/seed_apps/ holds verbatim copies of the `TaskMonitor` components
of the seed document (websocket-task-notifications.zh.md; see the README
there) and one small entry per framework that mounts them. Neither component
ever sends `get_queue_status`: a page that connects while a task is already
running sees it only if the server sends the current `queue_status` first,
without waiting for the lists to change.

The build (Vite, from the package-lock.json that `./test.sh` installs with
`npm ci`) goes to a temporary directory, served by a static file server on its
own loopback port: another origin than the notify server's, as a Vite or
webpack dev server would be.

The components hard-code `ws://localhost:8000/ws/tasks/`. The one thing these
tests change is that address: a script installed before any of the page's own
(`redirect_seed_socket`) makes `new WebSocket` open this test server's
`ws://127.0.0.1:PORT/ws/tasks/` instead. The component source is not touched.
"""

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.support.static_site import serve_directory
from tests.support.tasks import submit, unique_avid

SEED_APPS = Path(__file__).resolve().parent / "seed_apps"
SEED_SOCKET_URL = "ws://localhost:8000/ws/tasks/"
# Long enough to open the page and see the task listed, short enough to then
# wait for its completion within one expect() timeout.
TASK_SECONDS = 8.0


@pytest.fixture(scope="module")
def seed_site(tmp_path_factory):
    """The origin of a static server holding the built apps: /react/ and /vue/."""
    npm = shutil.which("npm")
    assert npm, "npm is missing: the seed component tests need Node.js and npm"
    assert (SEED_APPS / "node_modules").is_dir(), (
        f"{SEED_APPS}/node_modules is missing: run `npm ci --prefix {SEED_APPS}` "
        "(./test.sh does)")
    out = tmp_path_factory.mktemp("seed-apps-build")
    build = subprocess.run(
        [npm, "run", "--silent", "build", "--", "--outDir", str(out), "--emptyOutDir"],
        cwd=SEED_APPS, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180)
    assert build.returncode == 0, (f"building the seed apps failed ({build.returncode}):\n"
                                   f"{build.stdout}\n{build.stderr}")
    for app in ("react", "vue"):
        assert (out / app / "index.html").is_file(), f"the build made no {app}/index.html"
    with serve_directory(out) as origin:
        yield origin


def redirect_seed_socket(server_port: int) -> str:
    """A page script: `new WebSocket(SEED_SOCKET_URL)` opens this test
    server's socket instead; every URL asked for is kept in
    `window.requestedSocketUrls`."""
    return f"""(() => {{
        const SeedWebSocket = window.WebSocket;
        window.requestedSocketUrls = [];
        window.WebSocket = class extends SeedWebSocket {{
            constructor(url, protocols) {{
                window.requestedSocketUrls.push(String(url));
                super(String(url).replace({json.dumps(SEED_SOCKET_URL)},
                                          'ws://127.0.0.1:{server_port}/ws/tasks/'), protocols);
            }}
        }};
    }})();"""


def queue_snapshot(port: int):
    """The server's queue_status data over REST, or None before its first poll
    (asked over REST, so no socket of this test is open meanwhile)."""
    url = f"http://127.0.0.1:{port}/api/tasks/queue/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)["data"]
    except urllib.error.HTTPError as error:
        if error.code == 503:
            return None
        raise


def wait_for_snapshot(port: int, accept, what: str, timeout: float = 30.0) -> None:
    """Until the server's snapshot satisfies `accept` (a deadline poll)."""
    deadline = time.monotonic() + timeout
    while True:
        data = queue_snapshot(port)
        if data is not None and accept(data):
            return
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s; last: {data}"
        time.sleep(0.05)


def is_quiet(data: dict) -> bool:
    return not (data["active_tasks"] or data["scheduled_tasks"] or data["reserved_tasks"])


def lists_only(task_id: str):
    return lambda data: ([task["task_id"] for task in data["active_tasks"]] == [task_id]
                         and not (data["scheduled_tasks"] or data["reserved_tasks"]))


@pytest.mark.parametrize("app", ["react", "vue"])
def test_seed_component_opened_on_a_quiet_queue_lists_the_running_task_then_its_completion(
        page, seed_site, server_port, producer, app):
    # A quiet queue: the task of this test is the only one, so nothing else
    # changes the lists while the page is open.
    wait_for_snapshot(server_port, is_quiet, "no task left from earlier tests")
    avid = unique_avid(f"SEED{app.upper()}")
    task_id = submit(producer, avid, seconds=TASK_SECONDS)
    wait_for_snapshot(server_port, lists_only(task_id), f"{task_id} alone in active_tasks")
    console_errors = []
    page.on("console", lambda message: console_errors.append(message.text)
            if message.type == "error" else None)
    page.add_init_script(redirect_seed_socket(server_port))

    # From here on the lists do not change until the task ends: only the
    # queue_status sent on connect can show it as running.
    page.goto(f"{seed_site}/{app}/")

    running = page.locator(".active-tasks li", has_text=avid)
    expect(running).to_have_text(f"{avid} - 正在下载...")
    expect(page.locator(".active-tasks h3")).to_have_text("正在执行 (1)")
    expect(page.locator(".notifications li.success", has_text=avid)).to_have_text(
        f"任务完成: {avid}", timeout=TASK_SECONDS * 1000 + 20_000)
    expect(page.locator(".active-tasks h3")).to_have_text("正在执行 (0)")
    expect(running).to_have_count(0)
    assert page.evaluate("() => window.requestedSocketUrls") == [SEED_SOCKET_URL]
    assert console_errors == []
