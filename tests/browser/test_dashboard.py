"""The dashboard at `/` in a real Chromium, fed by a real server and Celery worker."""

import json
import re
import time
import uuid

import redis
from playwright.sync_api import expect

from notify_server.protocol import task_events
from notify_server.protocol.names import Keys
from notify_server.worker.emitter import Emitter
from tests.support.processes import ARTIFACTS, start_server
from tests.support.tasks import submit, unique_avid
from tests.support.wsframes import free_port


def open_dashboard(page, port: int) -> None:
    page.goto(f"http://127.0.0.1:{port}/")
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")


def running_row(page, task_id: str):
    return page.locator(f'#running li[data-task-id="{task_id}"]')


def notification(page, task_id: str, kind: str):
    return page.locator(f'#notifications li[data-task-id="{task_id}"][data-kind="{kind}"]')


def waiting_row(page, task_id: str):
    return page.locator(f'#waiting li[data-task-id="{task_id}"]')


def worker_chip(page, name: str):
    return page.locator(f'#workers li[data-worker="{name}"]')


def session_worker_chip(page):
    """The chip of the session's Celery worker (hostname test-<hex>@localhost)."""
    return page.locator('#workers li[data-worker^="test-"]')


def test_running_task_shows_elapsed_time_and_a_moving_progress_bar_then_completes(
        page, server_port, producer):
    open_dashboard(page, server_port)
    expect(session_worker_chip(page)).to_have_attribute("data-online", "true")
    avid = unique_avid("DASH")
    task_id = submit(producer, avid, seconds=3.0)

    row = running_row(page, task_id)
    expect(row.locator(".avid")).to_have_text(avid)
    bar = row.get_by_role("progressbar")
    expect(bar).to_have_attribute("aria-valuenow", re.compile(r"^\d"))
    first = float(bar.get_attribute("aria-valuenow"))
    page.wait_for_function(
        """([selector, first]) => {
            const bar = document.querySelector(selector);
            return bar && Number(bar.getAttribute('aria-valuenow')) > first;
        }""", arg=[f'#running li[data-task-id="{task_id}"] [role=progressbar]', first])
    expect(row.locator(".worker")).to_have_text(re.compile(r"^test-\w+@localhost$"))
    expect(row.locator(".elapsed")).to_have_text(re.compile(r"^0:0\d$"))
    expect(row.locator(".percent")).to_have_text(re.compile(r"^\d+%$"))
    page.screenshot(path=str(ARTIFACTS / "dashboard-running.png"))

    expect(notification(page, task_id, "completed").locator(".message")).to_have_text(
        f"{avid} downloaded")
    expect(row).to_have_count(0)
    expect(notification(page, task_id, "started")).to_have_count(1)


def test_failed_task_is_shown_with_its_reason(page, server_port, producer):
    open_dashboard(page, server_port)
    avid = unique_avid("DASHBAD")
    task_id = submit(producer, avid, seconds=0.4, fail=True)

    failed = notification(page, task_id, "failed")
    expect(failed.locator(".message")).to_have_text(
        f"RuntimeError: download of {avid} failed: the source went away at 50%")
    expect(failed.locator(".avid")).to_have_text(avid)
    expect(running_row(page, task_id)).to_have_count(0)
    expect(notification(page, task_id, "completed")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "dashboard-failed.png"))


def test_scheduled_task_waits_with_its_eta_and_the_answering_workers_are_shown(
        page, server_port, producer):
    open_dashboard(page, server_port)
    avid = unique_avid("DASHETA")
    task_id = submit(producer, avid, seconds=0.2, countdown=2)

    waiting = page.locator(f'#waiting li[data-task-id="{task_id}"]')
    expect(waiting).to_have_attribute("data-kind", "scheduled")
    expect(waiting.locator(".kind")).to_have_text(re.compile(r"^scheduled for \d\d:\d\d:\d\d$"))
    expect(session_worker_chip(page).locator(".worker-name")).to_have_text(
        re.compile(r"^test-\w+@localhost$"))
    expect(session_worker_chip(page).locator(".beat")).to_have_text(re.compile(r"^online"))
    expect(page.locator("#snapshot")).to_have_attribute("data-stale", "false")
    expect(page.locator("#snapshot-text")).to_have_text(
        re.compile(r"^Queue lists as of \d\d:\d\d:\d\d \(\d+ s ago\)$"))

    expect(notification(page, task_id, "completed")).to_have_count(1)
    expect(waiting).to_have_count(0)


def test_seed_console_snippet_gets_a_queue_status_reply(page, server_port):
    """The seed's browser-console test, run in the page.

    Adapted in two ways only: the address is this server's, and the send
    waits for the socket to open. Pasted whole, the seed's three lines throw
    InvalidStateError (send() while CONNECTING); typed line by line, the
    socket is open before the third line, which is what the wait reproduces.
    """
    open_dashboard(page, server_port)

    with page.expect_console_message(lambda m: m.type == "log") as first_log:
        page.evaluate(f"""async () => {{
            const ws = new WebSocket('ws://127.0.0.1:{server_port}/ws/tasks/');
            ws.onmessage = (e) => console.log(JSON.parse(e.data));
            await new Promise((opened) => ws.addEventListener('open', opened, {{ once: true }}));
            ws.send(JSON.stringify({{action: 'get_queue_status'}}));
        }}""")

    reply = first_log.value.args[0].json_value()
    assert reply["type"] == "queue_status"
    assert {"active_tasks", "scheduled_tasks", "reserved_tasks"} <= set(reply["data"])
    assert reply["data"]["stale"] is False


def test_dashboard_keeps_up_with_hundreds_of_tasks(page, redis_server):
    prefix = f"load-{uuid.uuid4().hex[:6]}"
    server, port = start_server(redis_server.url, "--prefix", prefix, name="dashboard-load")
    try:
        page.add_init_script("""
            window.longestTask = 0;
            new PerformanceObserver((list) => {
                for (const entry of list.getEntries()) {
                    window.longestTask = Math.max(window.longestTask, entry.duration);
                }
            }).observe({ type: 'longtask', buffered: true });
        """)
        open_dashboard(page, port)
        emitter = Emitter(redis_server.url, prefix=prefix)
        tasks = [(f"{prefix}-{n:03d}", f"LOAD-{n:03d}") for n in range(400)]

        for task_id, avid in tasks:
            emitter.emit(task_events.task_started(task_id, avid))
        expect(page.locator("#running-count")).to_have_text("400")
        page.evaluate("() => { window.firstRow = document.querySelector('#running li'); }")
        for step in range(1, 11):
            for task_id, avid in tasks:
                emitter.emit(task_events.task_progress(task_id, avid, step, 10, f"part {step} of 10"))
        expect(page.locator('#running [aria-valuenow="100"]')).to_have_count(400)

        assert page.evaluate("() => document.querySelector('#running li') === window.firstRow"), \
            "rows were rebuilt instead of updated in place"
        frame_ms = page.evaluate("""() => new Promise((done) => {
            const start = performance.now();
            requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - start)));
        })""")
        assert frame_ms < 500, f"two frames took {frame_ms:.0f} ms with 400 running tasks"
        longest = page.evaluate("() => window.longestTask")
        assert longest < 1000, f"the page was blocked for {longest:.0f} ms at once"
        page.screenshot(path=str(ARTIFACTS / "dashboard-400-tasks.png"))

        for task_id, avid in tasks:
            emitter.emit(task_events.task_completed(task_id, avid, f"{avid} downloaded"))
        expect(page.locator("#running li")).to_have_count(0)
        expect(page.locator("#notifications li")).to_have_count(50)
        expect(page.locator("#notifications li").first).to_contain_text("LOAD-399 downloaded")
    finally:
        assert server.stop() == 0


def test_dashboard_reconnects_resumes_missed_events_and_reloads_after_a_resync(
        page, redis_server):
    prefix = f"reconnect-{uuid.uuid4().hex[:6]}"
    port = free_port()
    emitter = Emitter(redis_server.url, prefix=prefix)
    socket_urls = []
    page.on("websocket", lambda socket: socket_urls.append(socket.url))
    connection = page.locator("#connection")

    def start():
        return start_server(redis_server.url, "--port", str(port), "--prefix", prefix,
                            name="dashboard-restart")[0]

    server = start()
    try:
        open_dashboard(page, port)
        emitter.emit(task_events.task_started("t-away-1", "AWAY-1"))
        expect(running_row(page, "t-away-1")).to_have_count(1)

        assert server.stop() == 0
        expect(connection).not_to_have_attribute("data-state", "open")
        emitter.emit(task_events.task_completed("t-away-1", "AWAY-1", "finished while away"))
        emitter.emit(task_events.task_started("t-away-2", "AWAY-2"))
        server = start()

        expect(connection).to_have_attribute("data-state", "open")
        expect(notification(page, "t-away-1", "completed").locator(".message")).to_have_text(
            "finished while away")
        expect(running_row(page, "t-away-2")).to_have_count(1)
        expect(running_row(page, "t-away-1")).to_have_count(0)
        assert "last_event_id=" not in socket_urls[0]
        assert any("last_event_id=" in url for url in socket_urls[1:]), socket_urls

        assert server.stop() == 0
        expect(connection).not_to_have_attribute("data-state", "open")
        redis.Redis.from_url(redis_server.url).delete(Keys(prefix).history_stream)
        emitter.emit(task_events.task_started("t-away-3", "AWAY-3"))
        server = start()

        expect(page.locator('#notifications li[data-kind="resync"]')).to_have_count(1)
        expect(running_row(page, "t-away-2")).to_have_count(0)
        expect(connection).to_have_attribute("data-state", "open")
    finally:
        server.stop()


def test_bridge_events_show_a_received_task_on_its_worker_a_rejection_and_workers_coming_and_going(
        page, redis_server):
    """task_received, task_rejected, worker_online and worker_offline as the
    server relays them from its history stream, written there as a worker's
    events are: the page sees them exactly as the event bridge will send them."""
    prefix = f"bridge-{uuid.uuid4().hex[:6]}"
    server, port = start_server(redis_server.url, "--prefix", prefix, name="dashboard-bridge")
    emitter = Emitter(redis_server.url, prefix=prefix)
    worker = f"{prefix}@bridge-host"
    try:
        open_dashboard(page, port)

        emitter.emit({"type": "worker_online", "data": {"worker": worker, "time": time.time() - 30}})
        chip = worker_chip(page, worker)
        expect(chip).to_have_attribute("data-online", "true")
        expect(chip).to_have_text(re.compile(rf"^{worker} online, last heartbeat 3\d s ago$"))

        emitter.emit({"type": "task_received", "data": {
            "task_id": f"{prefix}-1", "avid": "BRIDGE-1", "status": "received", "worker": worker}})
        received = waiting_row(page, f"{prefix}-1")
        expect(received).to_have_attribute("data-kind", "received")
        expect(received.locator(".avid")).to_have_text("BRIDGE-1")
        expect(received.locator(".worker")).to_have_text(worker)
        expect(received.locator(".kind")).to_have_text("received")
        page.screenshot(path=str(ARTIFACTS / "dashboard-received.png"))

        emitter.emit(task_events.task_started(f"{prefix}-1", "BRIDGE-1"))
        expect(running_row(page, f"{prefix}-1")).to_have_count(1)
        expect(received).to_have_count(0)

        emitter.emit({"type": "task_rejected", "data": {
            "task_id": f"{prefix}-2", "avid": "BRIDGE-2", "status": "rejected",
            "message": "Reject: malformed arguments"}})
        rejected = notification(page, f"{prefix}-2", "rejected")
        expect(rejected.locator(".message")).to_have_text("Reject: malformed arguments")
        expect(rejected.locator(".avid")).to_have_text("BRIDGE-2")

        emitter.emit({"type": "worker_offline", "data": {
            "worker": worker, "time": time.time(), "reason": "heartbeats stopped"}})
        expect(chip).to_have_attribute("data-online", "false")
        expect(chip.locator(".beat")).to_have_text(
            re.compile(r"^offline \(heartbeats stopped\), last heartbeat 3\d s ago$"))
    finally:
        assert server.stop() == 0


def test_strip_shows_queue_depths_and_worker_heartbeats_from_queue_status_and_keeps_them_live(
        page, server_port):
    """A scripted socket plays a server with the Celery event bridge on:
    its queue_status has `queues` and `worker_states`, which the real server
    of this branch does not send yet."""
    now = time.time()
    status = {"type": "queue_status", "data": {
        "active_tasks": [], "scheduled_tasks": [], "reserved_tasks": [],
        "workers": ["alpha@host"], "updated_at": now, "stale": False,
        "queues": [{"name": "celery", "waiting": 4}, {"name": "reports", "waiting": None}],
        "worker_states": [{"name": "alpha@host", "online": True, "last_heartbeat": now - 3},
                          {"name": "beta@host", "online": False, "last_heartbeat": now - 90}]}}
    sockets = []

    def bridge_server(socket):
        sockets.append(socket)
        socket.on_message(lambda frame: json.loads(frame).get("action") == "get_queue_status"
                          and socket.send(json.dumps(status)))

    page.route_web_socket(re.compile(r"/ws/tasks/"), bridge_server)
    open_dashboard(page, server_port)

    expect(page.locator('#queues li[data-queue="celery"]')).to_have_text("celery 4 waiting")
    reports = page.locator('#queues li[data-queue="reports"]')
    expect(reports).to_have_text("reports n/a")
    expect(reports).to_have_attribute("data-known", "false")
    alpha, beta = worker_chip(page, "alpha@host"), worker_chip(page, "beta@host")
    expect(alpha.locator(".beat")).to_have_text(re.compile(r"^online, last heartbeat [3-9] s ago$"))
    expect(beta.locator(".beat")).to_have_text(re.compile(r"^offline, last heartbeat 1:3\d ago$"))
    expect(beta).to_have_attribute("data-online", "false")
    page.screenshot(path=str(ARTIFACTS / "dashboard-strip.png"))

    [socket] = sockets
    socket.send(json.dumps({"id": "1700000000000-1", "type": "worker_offline", "data": {
        "worker": "alpha@host", "time": time.time(), "reason": "shutdown"}}))
    socket.send(json.dumps({"id": "1700000000000-2", "type": "worker_online", "data": {
        "worker": "beta@host", "time": time.time()}}))
    expect(alpha.locator(".beat")).to_have_text(
        re.compile(r"^offline \(shutdown\), last heartbeat \d s ago$"))
    expect(beta.locator(".beat")).to_have_text(re.compile(r"^online, last heartbeat \d s ago$"))
    expect(page.locator("#workers li")).to_have_count(2)


def test_with_the_real_bridge_the_strip_shows_the_workers_heartbeats_and_the_queue_depth(
        page, redis_server, worker):
    """End to end: the server reads the session worker's own heartbeats (Celery
    sends them without -E too) and the broker's queue length. Its own prefix
    keeps what it writes away from the other tests' servers."""
    prefix = f"strip-{uuid.uuid4().hex[:6]}"
    server, port = start_server(redis_server.url, "--prefix", prefix, "--celery-events",
                                name="dashboard-real-bridge")
    try:
        open_dashboard(page, port)
        expect(session_worker_chip(page).locator(".beat")).to_have_text(
            re.compile(r"^online, last heartbeat \d+ s ago$"))
        expect(page.locator('#queues li[data-queue="celery"]')).to_have_text(
            re.compile(r"^celery \d+ waiting$"))
    finally:
        assert server.stop() == 0


# -- task records: the detail dialog, recent failures, the per-minute chart ------

DATE_TIME = re.compile(r"\d{1,2}:\d\d:\d\d")


def detail_field(page, key: str):
    return page.locator(f'#detail dd[data-field="{key}"]')


def test_clicking_a_running_task_opens_its_record_which_follows_it_to_success(
        page, server_port, producer):
    open_dashboard(page, server_port)
    avid = unique_avid("DETAIL")
    task_id = submit(producer, avid, seconds=2.0)

    running_row(page, task_id).click()
    dialog = page.locator("#detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#detail-task-id")).to_have_text(task_id)
    expect(detail_field(page, "status")).to_have_text(re.compile(r"^(started|progress)$"))

    expect(detail_field(page, "status")).to_have_text("success")
    expect(detail_field(page, "avid")).to_have_text(avid)
    expect(detail_field(page, "name")).to_have_text("notify_server.demo.download")
    expect(detail_field(page, "worker")).to_have_text(re.compile(r"^test-\w+@localhost$"))
    expect(detail_field(page, "message")).to_have_text(f"{avid} downloaded")
    expect(detail_field(page, "progress")).to_have_text(f"100% (10 of 10): {avid}: 100%")
    expect(detail_field(page, "runtime")).to_have_text(re.compile(r"^[2-4]\.\d\d s$"))
    expect(detail_field(page, "received_at")).to_have_text("—")
    expect(detail_field(page, "started_at")).to_have_text(DATE_TIME)
    expect(detail_field(page, "finished_at")).to_have_text(DATE_TIME)
    timeline = page.locator("#detail-timeline li")
    expect(timeline).to_have_count(12)
    assert timeline.evaluate_all("rows => rows.map((row) => row.dataset.kind)") == \
        ["started"] + ["progress"] * 10 + ["completed"]
    expect(timeline.last.locator(".offset")).to_have_text(re.compile(r"^\+[2-4]\.\d\d s$"))
    page.screenshot(path=str(ARTIFACTS / "dashboard-detail.png"))

    page.locator("#detail-close").click()
    expect(dialog).to_be_hidden()


def test_a_failed_task_opens_from_its_notification_with_its_reason_and_timeline(
        page, server_port, producer):
    open_dashboard(page, server_port)
    avid = unique_avid("DETAILBAD")
    task_id = submit(producer, avid, seconds=0.4, fail=True)

    notification(page, task_id, "failed").click()
    expect(detail_field(page, "status")).to_have_text("failed")
    reason = f"RuntimeError: download of {avid} failed: the source went away at 50%"
    expect(detail_field(page, "message")).to_have_text(reason)
    expect(page.locator("#detail dt").filter(has_text="Reason")).to_have_count(1)
    expect(detail_field(page, "avid")).to_have_text(avid)
    expect(detail_field(page, "worker")).to_have_text(re.compile(r"^test-\w+@localhost$"))
    expect(detail_field(page, "progress")).to_have_text(f"40% (4 of 10): {avid}: 40%")
    expect(detail_field(page, "finished_at")).to_have_text(DATE_TIME)
    timeline = page.locator("#detail-timeline li")
    expect(timeline).to_have_count(6)
    assert timeline.evaluate_all("rows => rows.map((row) => row.dataset.kind)") == \
        ["started"] + ["progress"] * 4 + ["failed"]

    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()


def emit_failure(emitter: Emitter, task_id: str, name: str, reason: str) -> None:
    record = {"attempt": 0, "name": name, "worker": "w1@host"}
    emitter.emit(task_events.task_started(task_id, task_id.upper()), record=record)
    emitter.emit(task_events.task_failed(task_id, task_id.upper(), reason), record=record)


def test_recent_failures_list_reasons_narrow_by_task_name_and_load_more(page, redis_server):
    prefix = f"failures-{uuid.uuid4().hex[:6]}"
    server, port = start_server(redis_server.url, "--prefix", prefix, name="dashboard-failures")
    emitter = Emitter(redis_server.url, prefix=prefix)
    for n in range(25):
        emit_failure(emitter, f"exp-{n:02d}", "tasks.export", f"OSError: disk {n} full")
    for n in range(2):
        emit_failure(emitter, f"imp-{n}", "tasks.import", f"ValueError: bad row {n}")
    emitter.emit(task_events.task_completed("fine-1", "FINE-1", "ok"),
                 record={"attempt": 0, "name": "tasks.import"})
    rows = page.locator("#failures li")
    try:
        open_dashboard(page, port)

        expect(rows).to_have_count(20)
        expect(rows.first).to_have_attribute("data-task-id", "imp-1")
        expect(rows.first.locator(".message")).to_have_text("ValueError: bad row 1")
        expect(rows.first.locator(".task-name")).to_have_text("tasks.import")
        more = page.locator("#failures-more")
        more.click()
        expect(rows).to_have_count(27)
        expect(rows.last).to_have_attribute("data-task-id", "exp-00")
        expect(rows.last.locator(".message")).to_have_text("OSError: disk 0 full")
        expect(more).to_be_hidden()

        page.locator("#failures-name").fill("tasks.import")
        expect(rows).to_have_count(2)
        assert rows.evaluate_all("rows => rows.map((row) => row.dataset.taskId)") == \
            ["imp-1", "imp-0"]
        expect(rows.nth(1).locator(".message")).to_have_text("ValueError: bad row 0")

        emit_failure(emitter, "exp-late", "tasks.export", "OSError: late")
        emit_failure(emitter, "imp-late", "tasks.import", "ValueError: late row")
        expect(rows.first).to_have_attribute("data-task-id", "imp-late")
        expect(rows.first.locator(".message")).to_have_text("ValueError: late row")
        expect(rows).to_have_count(3)
        page.screenshot(path=str(ARTIFACTS / "dashboard-failures.png"))

        rows.first.click()
        expect(detail_field(page, "name")).to_have_text("tasks.import")
        expect(detail_field(page, "message")).to_have_text("ValueError: late row")
    finally:
        assert server.stop() == 0


def test_chart_shows_each_minutes_completed_and_failed_tasks_of_the_last_hour(
        page, redis_server):
    prefix = f"chart-{uuid.uuid4().hex[:6]}"
    server, port = start_server(redis_server.url, "--prefix", prefix, name="dashboard-chart")
    emitter = Emitter(redis_server.url, prefix=prefix)
    now = time.time()
    busy, quiet = now - 10 * 60, now - 3 * 60
    finished = [("c1", busy, True), ("c2", busy, True), ("c3", busy, True), ("f1", busy, False),
                ("c4", quiet, True), ("f2", quiet, False), ("f3", quiet, False)]
    for task_id, at, ok in finished:
        message = (task_events.task_completed(task_id, task_id, "done") if ok
                   else task_events.task_failed(task_id, task_id, "Boom"))
        emitter.emit(message, record={"attempt": 0, "name": "tasks.x", "time": at})
    chart = page.locator("#minute-chart")
    try:
        open_dashboard(page, port)

        expect(page.locator("#chart-summary")).to_have_text(
            "4 completed, 3 failed in the last hour; busiest minute: 4")
        expect(chart.locator("g.minute")).to_have_count(60)
        busy_column = chart.locator(f'g[data-minute="{int(busy // 60) * 60}"]')
        expect(busy_column).to_have_attribute("data-completed", "3")
        expect(busy_column).to_have_attribute("data-failed", "1")
        # The busiest minute fills the 120 units: 3 of 4 completed, 1 of 4 failed on top.
        expect(busy_column.locator("rect.completed")).to_have_attribute("height", "90")
        expect(busy_column.locator("rect.failed")).to_have_attribute("height", "30")
        expect(busy_column.locator("title")).to_have_text(
            re.compile(r"^\d\d:\d\d:00: 3 completed, 1 failed$"))
        quiet_column = chart.locator(f'g[data-minute="{int(quiet // 60) * 60}"]')
        expect(quiet_column).to_have_attribute("data-completed", "1")
        expect(quiet_column).to_have_attribute("data-failed", "2")
        expect(quiet_column.locator("rect.failed")).to_have_attribute("height", "60")
        expect(chart.locator('g[data-completed="0"][data-failed="0"]')).to_have_count(58)
        page.screenshot(path=str(ARTIFACTS / "dashboard-chart.png"))

        emitter.emit(task_events.task_completed("c-now", "C-NOW", "done"),
                     record={"attempt": 0, "name": "tasks.x"})
        expect(page.locator("#chart-summary")).to_have_text(
            "5 completed, 3 failed in the last hour; busiest minute: 4")
    finally:
        assert server.stop() == 0
