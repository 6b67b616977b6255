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
