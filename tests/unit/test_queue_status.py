from notify_server.protocol.task_events import subject_of
from notify_server.queue.replies import normalise
from notify_server.queue.state import QueueState
from notify_server.queue.views import for_scope

ACTIVE = {"celery@a": [{"id": "t1", "name": "dl", "args": ["SSIS-950"], "kwargs": {},
                        "hostname": "celery@a", "time_start": 1703001234.567,
                        "acknowledged": True, "worker_pid": 7}]}
SCHEDULED = {"celery@a": [{"eta": "2026-01-01T00:00:00+00:00", "priority": 6,
                           "request": {"id": "t2", "args": [], "kwargs": {"avid": "SONE-028"}}}]}
RESERVED = {"celery@b": [{"id": "t3", "args": "('X-1',)", "kwargs": "{}"}]}


def test_normalise_gives_the_seed_shape_once_the_owner_is_removed():
    data = for_scope(normalise(ACTIVE, SCHEDULED, RESERVED), None)
    assert data["active_tasks"] == [{"task_id": "t1", "avid": "SSIS-950", "worker": "celery@a",
                                     "time_start": 1703001234.567}]
    assert data["scheduled_tasks"] == [{"task_id": "t2", "avid": "SONE-028", "worker": "celery@a",
                                        "eta": "2026-01-01T00:00:00+00:00"}]
    assert data["reserved_tasks"] == [{"task_id": "t3", "avid": "X-1", "worker": "celery@b"}]
    assert data["workers"] == ["celery@a", "celery@b"]


def test_normalise_treats_no_reply_as_empty():
    data = normalise(None, None, None)
    assert data == {"active_tasks": [], "scheduled_tasks": [], "reserved_tasks": [],
                    "workers": [], "queues": []}


def test_subject_prefers_the_keyword_then_the_first_positional():
    assert subject_of(["pos"], {"avid": "kw"}, "avid") == "kw"
    assert subject_of(["pos"], {}, "avid") == "pos"
    assert subject_of([], {}, "avid") is None
    assert subject_of(["pos"], {"movie": "m"}, "movie") == "m"
    assert subject_of("not python (", "{", "avid") is None
    assert subject_of([{"nested": 1}], {}, "avid") == "{'nested': 1}"


def test_queue_state_reports_change_only_when_lists_or_staleness_move():
    state = QueueState()
    assert state.data() is None and state.stale_reason
    snapshot = normalise(ACTIVE, None, None)
    assert state.update(snapshot, 1.0) is True
    assert state.update(dict(snapshot), 2.0) is False
    assert state.data()["updated_at"] == 2.0 and state.data()["stale"] is False
    assert state.mark_failed("broker down") is True
    assert state.mark_failed("broker down") is False
    assert state.data()["stale"] is True and state.stale_reason == "broker down"
    assert state.data()["active_tasks"] == snapshot["active_tasks"]
    assert state.update(snapshot, 3.0) is True


def test_failed_poll_without_any_snapshot_is_not_a_change():
    state = QueueState()
    assert state.mark_failed("no worker") is False
    assert state.data() is None and state.stale_reason == "no worker"


OWNED = {"celery@a": [
    {"id": "a1", "args": ["A-1"], "kwargs": {"user_id": "alice"}, "time_start": 1.0},
    {"id": "b1", "args": "('B-1',)", "kwargs": "{'user_id': 'bob'}", "time_start": 2.0},
    {"id": "n1", "args": ["N-1"], "kwargs": {"user_id": 42}, "time_start": 3.0},
    {"id": "x1", "args": ["X-1"], "kwargs": {}, "time_start": 4.0}]}


def test_a_scope_sees_only_its_owners_tasks_and_nothing_of_the_others():
    data = normalise(OWNED, None, OWNED)
    assert [e["owner"] for e in data["active_tasks"]] == ["alice", "bob", "42", None]
    alice = for_scope(data, frozenset({"alice"}))
    assert [e["task_id"] for e in alice["active_tasks"]] == ["a1"]
    assert [e["task_id"] for e in alice["reserved_tasks"]] == ["a1"]
    assert alice["workers"] == ["celery@a"]
    assert all("owner" not in e for key in ("active_tasks", "reserved_tasks")
               for e in alice[key])
    assert [e["task_id"] for e in for_scope(data, frozenset({"bob", "42"}))["active_tasks"]] \
        == ["b1", "n1"]
    assert for_scope(data, frozenset())["active_tasks"] == []
    everything = for_scope(data, None)
    assert [e["task_id"] for e in everything["active_tasks"]] == ["a1", "b1", "n1", "x1"]
    assert "owner" in data["active_tasks"][0]  # the shared snapshot keeps it


def test_the_owner_argument_is_configurable_and_keyword_only():
    data = normalise({"w": [{"id": "t", "args": ["alice"], "kwargs": {"account": "carol"}}]},
                     None, None, owner_arg="account")
    assert data["active_tasks"][0]["owner"] == "carol"
    data = normalise({"w": [{"id": "t", "args": ["alice"], "kwargs": {}}]}, None, None)
    assert data["active_tasks"][0]["owner"] is None
