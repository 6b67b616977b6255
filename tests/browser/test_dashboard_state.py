"""The dashboard's rules (dashboard-state.js, no DOM) run in Chromium with a fake clock."""

import pytest

BOARD = """async (steps) => {
    const { TaskBoard, SNAPSHOT_GRACE_MS } = await import('/static/dashboard-state.js');
    let now = 1700000000000;
    const board = new TaskBoard(() => now);
    const views = [];
    for (const [kind, ...args] of steps) {
        if (kind === 'wait') now += args[0] === 'grace' ? SNAPSHOT_GRACE_MS + 1 : args[0];
        else if (kind === 'queue_status') board.applyQueueStatus(args[0]);
        else if (kind === 'resync') board.applyResync(args[0]);
        else if (kind.startsWith('worker_')) board.applyWorkerEvent(kind, args[0]);
        else if (kind === 'look') views.push({
            running: [...board.running.values()].map((t) => [t.taskId, t.percent, t.worker]),
            waiting: board.waiting.map((t) => [t.taskId, t.kind]),
            waitingOn: board.waiting.map((t) => t.worker),
            notifications: board.notifications.map((n) => [n.kind, n.taskId, n.message]),
            workers: board.workers.map((w) => [w.name, w.online, w.lastHeartbeat, w.reason]),
            queues: board.queues.map((q) => [q.name, q.waiting]),
        });
        else board.applyTaskEvent(kind, args[0]);
    }
    return views;
}"""


@pytest.fixture
def run_board(page, server_port):
    """Apply steps to a fresh TaskBoard; returns what it showed at each ("look",)."""
    page.goto(f"http://127.0.0.1:{server_port}/")
    return lambda *steps: page.evaluate(BOARD, [list(step) for step in steps])


def snapshot(active=(), scheduled=(), reserved=(), **more):
    """A queue_status as the seed's server sends it; `more` adds the bridge's
    `queues` and `worker_states`, or replaces any key."""
    return {"active_tasks": [{"task_id": t, "avid": t.upper(), "worker": "w@h",
                              "time_start": 1700000000.0} for t in active],
            "scheduled_tasks": [{"task_id": t, "avid": t.upper(), "worker": "w@h", "eta": eta}
                                for t, eta in scheduled],
            "reserved_tasks": [{"task_id": t, "avid": t.upper(), "worker": "w@h"} for t in reserved],
            "workers": ["w@h"], "updated_at": 1700000000.0, "stale": False, **more}

# The fake clock's start, in epoch seconds as the protocol gives times.
START = 1700000000.0


def event(task_id, **extra):
    return {"task_id": task_id, "avid": task_id.upper(), **extra}


def test_waiting_lists_reserved_tasks_first_then_scheduled_by_eta(run_board):
    [view] = run_board(
        ("queue_status", snapshot(active=["a"], reserved=["r"],
                                  scheduled=[("late", "2030-01-01T10:00:05+00:00"),
                                             ("early", "2030-01-01T10:00:01+00:00")])),
        ("look",))
    assert view["running"] == [["a", None, "w@h"]]
    assert view["waiting"] == [["r", "reserved"], ["early", "scheduled"], ["late", "scheduled"]]


def test_started_task_leaves_waiting_and_its_progress_survives_the_next_snapshot(run_board):
    [view] = run_board(
        ("queue_status", snapshot(reserved=["t"])),
        ("task_started", event("t")),
        ("task_progress", event("t", percent=40.0, message="4 of 10")),
        ("queue_status", snapshot(active=["t"])),
        ("look",))
    assert view["waiting"] == []
    assert view["running"] == [["t", 40, "w@h"]]


def test_a_snapshot_older_than_a_start_event_does_not_hide_the_task_until_the_grace_ends(
        run_board):
    before, after = run_board(
        ("task_started", event("t")),
        ("queue_status", snapshot()),
        ("look",),
        ("wait", "grace"),
        ("queue_status", snapshot()),
        ("look",))
    assert before["running"] == [["t", None, None]]
    assert after["running"] == []


def test_a_snapshot_older_than_a_finish_event_does_not_bring_the_task_back(run_board):
    [view] = run_board(
        ("queue_status", snapshot(active=["t"])),
        ("task_completed", event("t", message="done")),
        ("queue_status", snapshot(active=["t"])),
        ("look",))
    assert view["running"] == []
    assert view["notifications"] == [["completed", "t", "done"]]


def test_failure_is_notified_with_its_reason(run_board):
    [view] = run_board(
        ("task_started", event("t")),
        ("task_failed", event("t", message="RuntimeError: disk full")),
        ("look",))
    assert view["running"] == []
    assert view["notifications"] == [["failed", "t", "RuntimeError: disk full"],
                                     ["started", "t", ""]]


def test_resync_forgets_every_task_and_says_why(run_board):
    [view] = run_board(
        ("queue_status", snapshot(active=["a"], reserved=["r"])),
        ("task_started", event("b")),
        ("resync", "event 1-0 is not in the retained history"),
        ("look",))
    assert view["running"] == [] and view["waiting"] == []
    assert view["notifications"][0] == ["resync", None, "event 1-0 is not in the retained history"]


def test_notifications_keep_only_the_latest_fifty(run_board):
    steps = [("task_completed", event(f"t{n}", message=f"m{n}")) for n in range(120)]
    [view] = run_board(*steps, ("look",))
    assert len(view["notifications"]) == 50
    assert view["notifications"][0] == ["completed", "t119", "m119"]
    assert view["notifications"][-1] == ["completed", "t70", "m70"]


def test_received_task_waits_on_its_worker_after_the_reserved_ones_until_it_starts(run_board):
    received, started = run_board(
        ("queue_status", snapshot(reserved=["r"], scheduled=[("s", "2030-01-01T10:00:00+00:00")])),
        ("task_received", event("t", status="received", worker="w2@h")),
        ("look",),
        ("task_started", event("t")),
        ("look",))
    assert received["waiting"] == [["r", "reserved"], ["t", "received"], ["s", "scheduled"]]
    assert received["waitingOn"] == ["w@h", "w2@h", "w@h"]
    assert started["waiting"] == [["r", "reserved"], ["s", "scheduled"]]
    assert started["running"] == [["t", None, None]]
    assert received["notifications"] == [], "a received task is a row, not a notification"


def test_a_received_task_outlives_an_older_snapshot_until_the_grace_ends(run_board):
    before, after = run_board(
        ("task_received", event("t", worker="w@h")),
        ("queue_status", snapshot()),
        ("look",),
        ("wait", "grace"),
        ("queue_status", snapshot()),
        ("look",))
    assert before["waiting"] == [["t", "received"]]
    assert after["waiting"] == []


def test_a_snapshot_that_lists_a_received_task_shows_what_it_knows(run_board):
    [view] = run_board(
        ("task_received", event("t", worker="w@h")),
        ("queue_status", snapshot(scheduled=[("t", "2030-01-01T10:00:00+00:00")])),
        ("look",))
    assert view["waiting"] == [["t", "scheduled"]]


def test_a_late_received_event_does_not_bring_back_a_started_or_finished_task(run_board):
    [view] = run_board(
        ("task_started", event("running")),
        ("task_received", event("running", worker="w@h")),
        ("task_completed", event("done", message="ok")),
        ("task_received", event("done", worker="w@h")),
        ("look",))
    assert view["waiting"] == []
    assert view["running"] == [["running", None, None]]


def test_rejected_task_leaves_the_lists_and_is_notified_with_its_reason(run_board):
    [view] = run_board(
        ("task_received", event("waiting", worker="w@h")),
        ("task_started", event("running")),
        ("task_rejected", event("waiting", status="rejected", message="Reject: bad input")),
        ("task_rejected", event("running", status="rejected", message="Reject: requeued")),
        ("look",))
    assert view["waiting"] == [] and view["running"] == []
    assert view["notifications"][:2] == [["rejected", "running", "Reject: requeued"],
                                         ["rejected", "waiting", "Reject: bad input"]]


def test_queue_status_gives_the_queue_depths_and_each_workers_state_and_heartbeat(run_board):
    [view] = run_board(
        ("queue_status", snapshot(
            workers=["a@h"],
            queues=[{"name": "celery", "waiting": 3}, {"name": "rabbit", "waiting": None}],
            worker_states=[{"name": "a@h", "online": True, "last_heartbeat": START - 2},
                           {"name": "b@h", "online": False, "last_heartbeat": START - 60},
                           {"name": "c@h", "online": True, "last_heartbeat": None}])),
        ("look",))
    assert view["queues"] == [["celery", 3], ["rabbit", None]]
    assert view["workers"] == [["a@h", True, (START - 2) * 1000, None],
                               ["b@h", False, (START - 60) * 1000, None],
                               ["c@h", True, None, None]]


def test_an_older_server_without_worker_states_shows_its_answering_workers_online(run_board):
    [view] = run_board(("queue_status", snapshot(workers=["b@h", "a@h"])), ("look",))
    assert view["workers"] == [["a@h", True, None, None], ["b@h", True, None, None]]
    assert view["queues"] == []


def test_worker_events_change_the_strip_between_snapshots(run_board):
    online, offline = run_board(
        ("queue_status", snapshot(worker_states=[
            {"name": "a@h", "online": True, "last_heartbeat": START - 2}])),
        ("worker_online", {"worker": "new@h", "time": START - 1}),
        ("look",),
        ("worker_offline", {"worker": "a@h", "time": START, "reason": "heartbeats stopped"}),
        ("look",))
    assert online["workers"] == [["a@h", True, (START - 2) * 1000, None],
                                 ["new@h", True, (START - 1) * 1000, None]]
    assert offline["workers"][0] == ["a@h", False, (START - 2) * 1000, "heartbeats stopped"], \
        "going offline is no heartbeat: the last one stays"


def test_a_worker_event_outlives_an_older_snapshot_until_the_grace_ends(run_board):
    stale = snapshot(worker_states=[{"name": "a@h", "online": True, "last_heartbeat": START - 2}])
    before, after = run_board(
        ("worker_offline", {"worker": "a@h", "time": START, "reason": "shutdown"}),
        ("worker_online", {"worker": "new@h", "time": START}),
        ("queue_status", stale),
        ("look",),
        ("wait", "grace"),
        ("queue_status", stale),
        ("look",))
    assert before["workers"] == [["a@h", False, (START - 2) * 1000, "shutdown"],
                                 ["new@h", True, START * 1000, None]]
    assert after["workers"] == [["a@h", True, (START - 2) * 1000, None]]


def test_a_snapshot_that_agrees_a_worker_is_offline_keeps_the_reason_the_event_gave(run_board):
    offline = {"name": "a@h", "online": False, "last_heartbeat": START - 30}
    [view] = run_board(
        ("worker_offline", {"worker": "a@h", "time": START, "reason": "heartbeats stopped"}),
        ("wait", "grace"),
        ("queue_status", snapshot(worker_states=[offline])),
        ("look",))
    assert view["workers"] == [["a@h", False, (START - 30) * 1000, "heartbeats stopped"]]


# -- task records: formatting and the chart's geometry ------------------------------

RECORDS = """async ([name, args]) => {
    const state = await import('/static/dashboard-state.js');
    if (name === 'recordDetails') return state.recordDetails(args[0], (s) => `T${s}`);
    return state[name](...args);
}"""


@pytest.fixture
def run_records(page, server_port):
    """Call one of dashboard-state.js's record functions in the page."""
    page.goto(f"http://127.0.0.1:{server_port}/")
    return lambda name, *args: page.evaluate(RECORDS, [name, list(args)])


def test_runtimes_are_short_under_a_minute_and_clock_like_beyond(run_records):
    assert [run_records("formatRuntime", s) for s in (0.4213, 12.34, 125, 3725, None, -1)] == \
        ["0.42 s", "12.3 s", "2:05", "1:02:05", "—", "0.00 s"]


def test_a_records_details_name_each_field_and_say_what_is_not_known(run_records):
    record = {"task_id": "t", "avid": "A-1", "name": "tasks.x", "status": "failed",
              "worker": "w@h", "received_at": None, "started_at": 10.0, "finished_at": 12.5,
              "runtime": 2.5, "message": "ValueError: boom", "retries": 1,
              "progress": {"current": 4, "total": 10, "percent": 40.0, "message": "step 4"}}
    details = run_records("recordDetails", record)
    assert [(d["key"], d["label"], d["text"]) for d in details] == [
        ("avid", "Subject", "A-1"), ("name", "Name", "tasks.x"), ("status", "Status", "failed"),
        ("worker", "Worker", "w@h"), ("received_at", "Received", "—"),
        ("started_at", "Started", "T10"), ("finished_at", "Finished", "T12.5"),
        ("runtime", "Runtime", "2.50 s"), ("progress", "Progress", "40% (4 of 10): step 4"),
        ("retries", "Retries", "1"), ("message", "Reason", "ValueError: boom")]
    bare = run_records("recordDetails", {"task_id": "t", "avid": None, "status": "started"})
    assert {d["key"]: d["text"] for d in bare}["avid"] == "—"
    assert {d["key"]: d["label"] for d in bare}["message"] == "Message"


def test_a_timeline_gives_each_event_its_kind_and_offset_from_the_first(run_records):
    rows = run_records("timelineRows", {"events": [
        {"type": "task_started", "time": 100.0, "id": "1-0"},
        {"type": "task_progress", "time": 100.25, "id": "2-0"},
        {"type": "task_completed", "time": 103.5, "id": "3-0"}]})
    assert rows == [{"kind": "started", "at": 100.0, "offset": 0, "id": "1-0"},
                    {"kind": "progress", "at": 100.25, "offset": 0.25, "id": "2-0"},
                    {"kind": "completed", "at": 103.5, "offset": 3.5, "id": "3-0"}]


def test_chart_columns_stack_failed_on_completed_and_the_busiest_minute_fills_the_height(
        run_records):
    minutes = [{"minute": 60, "completed": 3, "failed": 1},
               {"minute": 120, "completed": 0, "failed": 0},
               {"minute": 180, "completed": 1, "failed": 1}]
    chart = run_records("minuteChart", minutes, 300, 100)
    assert (chart["peak"], chart["completed"], chart["failed"]) == (4, 4, 2)
    assert [(b["x"], b["width"]) for b in chart["bars"]] == [(10, 80), (110, 80), (210, 80)]
    assert [(b["completedY"], b["completedHeight"], b["failedY"], b["failedHeight"])
            for b in chart["bars"]] == [(25, 75, 0, 25), (100, 0, 100, 0), (75, 25, 50, 25)]
    quiet = run_records("minuteChart", [{"minute": 60, "completed": 0, "failed": 0}], 600, 120)
    assert quiet["peak"] == 0 and quiet["bars"][0]["completedHeight"] == 0
