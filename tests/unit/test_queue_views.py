"""The per-scope queue_status frames and the push diff (delivery.queue_views), without I/O."""

import orjson

from notify_server.access.auth import EVERYONE, Scope
from notify_server.delivery.queue_views import QueueViews
from notify_server.protocol.framing import text_frame

ALICE = Scope("alice", frozenset({"alice"}))
BOB = Scope("bob", frozenset({"bob"}))
CAROL = Scope("carol", frozenset({"carol", "alice"}))


def data(at, *tasks):
    return {"active_tasks": [{"task_id": task_id, "avid": None, "worker": "w", "owner": owner,
                              "time_start": 1.0} for task_id, owner in tasks],
            "scheduled_tasks": [], "reserved_tasks": [], "workers": ["w"], "queues": [],
            "updated_at": at, "stale": False}


def message_of(frame):
    """The one text message in a server frame (unmasked; payloads under 64 KiB)."""
    message = orjson.loads(frame[2:] if frame[1] < 126 else frame[4:])
    assert frame == text_frame(orjson.dumps(message))
    return message


def active(frame):
    return [entry["task_id"] for entry in message_of(frame)["data"]["active_tasks"]]


def test_each_scope_gets_only_its_owners_tasks_without_the_owner_field():
    views = QueueViews()
    snapshot = data(1.0, ("a1", "alice"), ("b1", "bob"), ("x1", None))

    assert active(views.frame(snapshot, EVERYONE)) == ["a1", "b1", "x1"]
    assert active(views.frame(snapshot, ALICE)) == ["a1"]
    assert active(views.frame(snapshot, BOB)) == ["b1"]
    assert all(b"owner" not in views.frame(snapshot, scope) for scope in (EVERYONE, ALICE, BOB))


def test_scopes_with_the_same_view_share_one_frame_until_the_data_changes():
    views = QueueViews()
    snapshot = data(1.0, ("a1", "alice"))
    # carol also sees alice, but only alice has tasks: the same view
    assert views.frame(snapshot, CAROL) is views.frame(snapshot, ALICE)
    later = data(2.0, ("a1", "alice"))
    assert views.frame(later, ALICE) is not views.frame(snapshot, ALICE)
    assert message_of(views.frame(later, ALICE))["data"]["updated_at"] == 2.0


def test_a_push_reaches_a_scoped_client_only_when_its_own_view_moved():
    views = QueueViews()
    views.frame(data(1.0, ("a1", "alice")), ALICE)
    views.frame(data(1.0, ("a1", "alice")), BOB)

    everything, frame_for = views.push(data(2.0, ("a1", "alice"), ("b1", "bob")))
    assert active(everything) == ["a1", "b1"]
    assert frame_for(ALICE) is None          # only bob's task came
    assert active(frame_for(BOB)) == ["b1"]

    everything, frame_for = views.push(data(3.0, ("a1", "alice"), ("b1", "bob")))
    assert frame_for(ALICE) is None and frame_for(BOB) is None  # a new poll time alone
    assert message_of(everything)["data"]["updated_at"] == 3.0
