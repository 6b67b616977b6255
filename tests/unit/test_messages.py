import orjson
import pytest

from notify_server.protocol import stream, task_events
from notify_server.protocol.messages import ProtocolError, parse_action
from notify_server.protocol.stream import InvalidEvent, parse_event
from tests.support.wsframes import text_payloads


def test_task_messages_carry_exactly_the_seed_keys_in_seed_order():
    assert task_events.task_started("t1", "SSIS-950") == {
        "type": "task_started", "data": {"task_id": "t1", "avid": "SSIS-950", "status": "started"}}
    assert list(task_events.task_completed("t1", "A", "done")["data"]) == [
        "task_id", "avid", "status", "message"]
    failed = task_events.task_failed("t1", "A", "why")
    assert failed["data"]["status"] == "failed" and failed["data"]["message"] == "why"


def test_progress_reports_percent_and_survives_zero_total():
    assert task_events.task_progress("t", "A", 3, 12, "m")["data"]["percent"] == 25.0
    assert task_events.task_progress("t", "A", 3, 0, "m")["data"]["percent"] == 0.0


def test_event_frame_is_encoded_once_and_carries_its_id():
    event = stream.Event("task_started", {"task_id": "t"}, id="5-0")
    assert event.frame is event.frame
    [payload] = text_payloads(event.frame)
    assert orjson.loads(payload) == {"type": "task_started", "data": {"task_id": "t"},
                                     "id": "5-0"}


def test_parse_event_accepts_channel_and_history_forms():
    live = parse_event(b'{"id": "17-2", "type": "task_failed", "data": {"task_id": "x"}}')
    assert (live.id, live.type, live.data["task_id"]) == ("17-2", "task_failed", "x")
    stored = parse_event(b'{"type": "task_started", "data": {}}', stream_id="9-0")
    assert stored.id == "9-0"
    bare = parse_event(b'{"type": "task_started", "data": {}}')
    assert bare.id is None


@pytest.mark.parametrize("payload", [b"nope", b"[]", b'{"data": {}}', b'{"type": "x"}',
                                     b'{"type": "x", "data": {}, "id": "abc"}'])
def test_parse_event_rejects_what_is_not_an_event(payload):
    with pytest.raises(InvalidEvent):
        parse_event(payload)


@pytest.mark.parametrize("frame, code", [
    ("{", "invalid_json"),
    ("3", "not_an_object"),
    ("{}", "missing_action"),
    ('{"action": 5}', "unknown_action"),
    ('{"action": "dance"}', "unknown_action"),
    ('{"action": "subscribe"}', "invalid_argument"),
    ('{"action": "subscribe", "avids": [{"a": 1}]}', "invalid_argument"),
    ('{"action": "subscribe", "task_ids": [true]}', "invalid_argument"),
    ('{"action": "resume"}', "invalid_argument"),
    ('{"action": "resume", "last_event_id": "1-x"}', "invalid_argument"),
    (b"\x00", "binary_not_supported"),
])
def test_parse_action_rejects_bad_frames_with_stable_codes(frame, code):
    with pytest.raises(ProtocolError) as caught:
        parse_action(frame)
    assert caught.value.code == code
    assert caught.value.reply()["type"] == "error"


def test_parse_action_reads_each_action():
    assert parse_action('{"action": "get_queue_status"}').name == "get_queue_status"
    assert parse_action('{"action": "ping"}').name == "ping"
    subscribe = parse_action('{"action": "subscribe", "task_ids": ["a", "b"]}')
    assert subscribe.task_ids == frozenset({"a", "b"}) and subscribe.avids is None
    assert parse_action('{"action": "resume", "last_event_id": "12-3"}').last_event_id == "12-3"


def test_stream_ids_order_numerically_not_lexically():
    assert stream.parse_stream_id("10-0") > stream.parse_stream_id("9-5")
    assert stream.parse_stream_id("9-10") > stream.parse_stream_id("9-9")
    assert stream.parse_stream_id("9") is None and stream.parse_stream_id(9) is None
    # Digits str.isdigit() accepts but int() or Redis refuse, and ids beyond 64 bits.
    for odd in ("²-0", "0-①", "١-٠", f"{2 ** 64}-0", f"0-{2 ** 64}", "+1-0", " 1-0"):
        assert stream.parse_stream_id(odd) is None, odd
    assert stream.parse_stream_id(f"{2 ** 64 - 1}-{2 ** 64 - 1}") == (2 ** 64 - 1,) * 2


def test_safe_text_never_raises_and_is_bounded():
    class Broken:
        def __str__(self):
            raise RuntimeError("boom")
    assert "Broken" in task_events.safe_text(Broken())
    assert len(task_events.safe_text("x" * 5000)) == 1000


def test_get_task_needs_a_task_id_without_control_characters():
    from notify_server.protocol.messages import INVALID_ARGUMENT, ProtocolError, parse_action
    assert parse_action('{"action": "get_task", "task_id": "t-1"}').task_id == "t-1"
    for bad in ('{"action": "get_task"}', '{"action": "get_task", "task_id": 5}',
                '{"action": "get_task", "task_id": ""}',
                '{"action": "get_task", "task_id": "a\\u0001"}',
                '{"action": "get_task", "task_id": "%s"}' % ("x" * 256)):
        try:
            parse_action(bad)
        except ProtocolError as exc:
            assert exc.code == INVALID_ARGUMENT and "task_id" in exc.message
        else:
            raise AssertionError(bad)
