import orjson
import pytest

from notify_server.delivery.hub import Hub
from notify_server.delivery.session import Session
from notify_server.protocol.framing import text_frame
from notify_server.protocol.messages import ProtocolError
from notify_server.protocol.stream import Event
from tests.support.wsframes import text_payloads


def event(event_id, task_id="t", avid="A"):
    return Event("task_started", {"task_id": task_id, "avid": avid, "status": "started"},
                 id=event_id)


def recorder():
    sent = []
    return sent, Session(sent.append, lambda code, reason: sent.append((code, reason)))


def ids(writes):
    return [orjson.loads(payload).get("id") for data in writes for payload in text_payloads(data)]


def test_frames_round_trip_at_every_length_class():
    for size in (0, 125, 126, 65535, 65536, 70000):
        body = b"x" * size
        assert text_payloads(text_frame(body) + text_frame(b"{}")) == [body, b"{}"]


def test_hub_gives_every_session_the_same_bytes_in_one_write_per_batch():
    hub, (first, a), (second, b) = Hub(), recorder(), recorder()
    hub.add(a)
    hub.add(b)
    hub.publish([event("1-0"), event("2-0")])
    assert len(first) == 1 and first[0] is second[0]
    assert ids(first) == ["1-0", "2-0"]
    hub.discard(a)
    hub.publish([event("3-0")])
    assert ids(first) == ["1-0", "2-0"] and ids(second) == ["1-0", "2-0", "3-0"]


def test_queue_status_goes_to_live_sessions_and_not_to_those_replaying():
    hub, (live_sent, live), (replaying_sent, replaying) = Hub(), recorder(), recorder()
    hub.add(live)
    hub.add(replaying)
    replaying.hold()

    assert hub.send_live(b"status", lambda scope: b"scoped") == 1
    assert hub.send_all(b"resync") == 2
    assert live_sent == [b"status", b"resync"] and replaying_sent == [b"resync"]


def test_subscribed_session_only_gets_its_tasks():
    hub, (sent, session), (everything, other) = Hub(), recorder(), recorder()
    hub.add(session)
    hub.add(other)
    session.subscribe(frozenset({"t2"}), frozenset({"B"}))
    hub.publish([event("1-0", "t1", "A"), event("2-0", "t2", "A"), event("3-0", "t3", "B"),
                 Event("task_started", {"task_id": "t4", "avid": ["list"]}, id="4-0")])
    assert ids(sent) == ["2-0", "3-0"]
    assert ids(everything) == ["1-0", "2-0", "3-0", "4-0"]


def test_replay_holds_live_events_and_releases_only_the_uncovered_ones():
    hub, (sent, session) = Hub(), recorder()
    hub.add(session)
    session.hold()
    hub.publish([event("5-0")])
    hub.publish([event("7-0"), Event("task_started", {"task_id": "bare"})])
    session.replay([event("4-0"), event("5-0"), event("6-0")])
    assert ids(sent) == ["4-0", "5-0", "6-0"]
    session.release("6-0")
    assert ids(sent) == ["4-0", "5-0", "6-0", "7-0", None]
    hub.publish([event("8-0")])
    assert ids(sent)[-1] == "8-0" and session.takes_everything


def test_release_without_a_replay_sends_everything_held():
    sent, session = recorder()
    session.hold()
    session.deliver([event("1-0")])
    session.release(None)
    assert ids(sent) == ["1-0"]


def test_live_events_the_replay_already_read_are_dropped_after_release():
    hub, (sent, session) = Hub(), recorder()
    hub.add(session)
    session.hold()
    hub.publish([event("5-0")])
    session.replay([event("5-0"), event("6-0"), event("7-0")])
    session.release("7-0")
    hub.publish([event("6-0"), event("7-0")])
    hub.publish([event("7-0"), event("8-0")])
    hub.publish([event("9-0")])
    assert ids(sent) == ["5-0", "6-0", "7-0", "8-0", "9-0"]
    assert session.takes_everything



def test_a_session_that_raises_costs_the_others_nothing_and_is_closed_with_1011():
    hub, healthy, closed = Hub(), [], []

    def broken(data):
        raise RuntimeError("a bug in one session's send")

    for number in range(10):
        if number % 2:
            sent, session = recorder()
            healthy.append(sent)
        else:
            session = Session(broken, lambda code, reason: closed.append(code))
        hub.add(session)

    assert hub.publish([event("1-0")]) == 5
    assert hub.send_all(b"frame") == 5
    hub.publish([event("2-0")])

    assert all(ids(sent[:1] + sent[2:]) == ["1-0", "2-0"] and sent[1] == b"frame"
               for sent in healthy)
    assert closed == [1011] * 5 and len(hub) == 5


def test_a_second_resume_while_one_replays_is_refused_and_changes_nothing():
    sent, session = recorder()
    session.hold()

    with pytest.raises(ProtocolError) as refused:
        session.hold()

    assert refused.value.code == "resume_in_progress"
    session.deliver([event("5-0")])
    session.release("4-0")
    assert ids(sent) == ["5-0"]


def record_frame(task_id, last_id):
    return text_frame(orjson.dumps({"type": "task", "data": {"task_id": task_id,
                                                             "last_id": last_id}}))


def test_records_go_first_then_only_events_after_each_records_last_id():
    hub, (sent, session) = Hub(), recorder()
    hub.add(session)
    session.subscribe(frozenset({"t1", "t2"}), None)
    session.hold_records()
    # Written before the record was read (so inside it) and after: held meanwhile.
    hub.publish([event("5-0", "t1"), event("6-0", "t2"), event("7-0", "t1")])
    assert sent == []
    session.release_records(record_frame("t1", "5-0") + record_frame("t2", "6-0"),
                            {"t1": "5-0", "t2": "6-0"})
    # A late copy of an event inside a record is not sent; later events are.
    hub.publish([event("8-0", "t2")])
    payloads = [orjson.loads(p) for data in sent for p in text_payloads(data)]
    assert [(p["type"], p.get("id") or p["data"]["last_id"]) for p in payloads] == [
        ("task", "5-0"), ("task", "6-0"), ("task_started", "7-0"), ("task_started", "8-0")]


def test_relayed_copies_up_to_a_records_last_id_are_dropped_until_the_stream_passes_it():
    hub, (sent, session) = Hub(), recorder()
    hub.add(session)
    session.subscribe(frozenset({"t1"}), None)
    session.hold_records()
    session.release_records(record_frame("t1", "9-0"), {"t1": "9-0"})
    hub.publish([event("8-0", "t1"), event("9-0", "t1"), event("10-0", "t1")])
    assert ids(sent[1:]) == ["10-0"]
    assert session.takes_everything is False  # still subscribed; the floors are gone
    assert session._floors is None


def test_records_during_a_resume_wait_for_both_before_live_events_flow():
    hub, (sent, session) = Hub(), recorder()
    hub.add(session)
    session.hold()
    session.subscribe(frozenset({"t1"}), None)
    session.hold_records()
    hub.publish([event("3-0", "t1")])
    session.release_records(b"", {})
    assert sent == []  # the replay still runs
    session.release("2-0")
    assert ids(sent) == ["3-0"]


def test_the_relay_refuses_the_servers_own_types_and_ids_ahead_of_redis():
    from notify_server.delivery.relay_cursor import MAX_AHEAD_MS, RelayCursor

    cursor, now = RelayCursor(), 1_700_000_000_000.0
    cursor.start_after(None)
    ahead = f"{int(now) + MAX_AHEAD_MS + 1}-0"
    assert cursor.refusal(Event("queue_status", {}), now) is not None
    assert cursor.refusal(Event("task", {}), now) is not None
    assert cursor.refusal(Event("task_uploaded", {}), now) is None
    assert cursor.refusal(Event("worker_online", {"worker": "w"}, id=f"{int(now)}-5"), now) is None
    assert "ahead" in cursor.refusal(event(ahead), now)
    assert cursor.refusal(event(f"{int(now) + MAX_AHEAD_MS}-0"), now) is None
