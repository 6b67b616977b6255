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
        else if (kind === 'look') views.push({
            running: [...board.running.values()].map((t) => [t.taskId, t.percent, t.worker]),
            waiting: board.waiting.map((t) => [t.taskId, t.kind]),
            notifications: board.notifications.map((n) => [n.kind, n.taskId, n.message]),
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


def snapshot(active=(), scheduled=(), reserved=()):
    return {"active_tasks": [{"task_id": t, "avid": t.upper(), "worker": "w@h",
                              "time_start": 1700000000.0} for t in active],
            "scheduled_tasks": [{"task_id": t, "avid": t.upper(), "worker": "w@h", "eta": eta}
                                for t, eta in scheduled],
            "reserved_tasks": [{"task_id": t, "avid": t.upper(), "worker": "w@h"} for t in reserved],
            "workers": ["w@h"], "updated_at": 1700000000.0, "stale": False}


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
