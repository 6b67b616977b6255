import orjson

from notify_server.hub import Hub
from notify_server.messages import Event
from notify_server.session import Session


def event(event_id, task_id="t", avid="A"):
    return Event("task_started", {"task_id": task_id, "avid": avid, "status": "started"},
                 id=event_id)


def recorder():
    sent = []
    return sent, Session(sent.append)


def ids(frames):
    return [orjson.loads(frame).get("id") for frame in frames]


def test_hub_gives_every_session_the_same_bytes():
    hub, (first, a), (second, b) = Hub(), recorder(), recorder()
    hub.add(a)
    hub.add(b)
    hub.publish(event("1-0"))
    assert first == second and first[0] is second[0]
    hub.discard(a)
    hub.publish(event("2-0"))
    assert ids(first) == ["1-0"] and ids(second) == ["1-0", "2-0"]


def test_subscribed_session_only_gets_its_tasks():
    sent, session = recorder()
    session.subscribe(frozenset({"t2"}), frozenset({"B"}))
    for item in (event("1-0", "t1", "A"), event("2-0", "t2", "A"), event("3-0", "t3", "B"),
                 Event("task_started", {"task_id": "t4", "avid": ["list"]}, id="4-0")):
        session.deliver(item)
    assert ids(sent) == ["2-0", "3-0"]


def test_replay_holds_live_events_and_releases_only_the_uncovered_ones():
    sent, session = recorder()
    session.hold()
    session.deliver(event("5-0"))
    session.deliver(event("7-0"))
    session.deliver(Event("task_started", {"task_id": "bare"}))
    for replayed in (event("4-0"), event("5-0"), event("6-0")):
        session.replay(replayed)
    assert ids(sent) == ["4-0", "5-0", "6-0"]
    session.release("6-0")
    assert ids(sent) == ["4-0", "5-0", "6-0", "7-0", None]
    session.deliver(event("8-0"))
    assert ids(sent)[-1] == "8-0" and not session.replaying


def test_release_without_a_replay_sends_everything_held():
    sent, session = recorder()
    session.hold()
    session.deliver(event("1-0"))
    session.release(None)
    assert ids(sent) == ["1-0"]
