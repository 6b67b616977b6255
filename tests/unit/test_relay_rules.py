"""The relay's rules (notify_server.delivery.relay_cursor): dedupe, gap fill, resync; no Redis."""

from notify_server.delivery.relay_cursor import START, RelayCursor, StreamCount
from notify_server.protocol.stream import Event


def event(event_id=None, task_id="t"):
    return Event("task_started", {"task_id": task_id, "avid": "A", "status": "started"},
                 id=event_id)


def ids(events):
    return [e.id for e in events]


def started_after(newest_id):
    cursor = RelayCursor()
    cursor.start_after(newest_id)
    return cursor


def test_a_cursor_starts_after_the_newest_event_of_the_history():
    cursor = RelayCursor()
    assert not cursor.started
    cursor.start_after("5-0")
    assert cursor.started and cursor.last_id == "5-0"
    assert ids(cursor.new_events([event("4-0"), event("5-0"), event("6-0")])) == ["6-0"]


def test_an_empty_history_starts_at_the_beginning():
    cursor = started_after(None)
    assert cursor.last_id == START
    assert ids(cursor.new_events([event("0-1"), event("1-0")])) == ["0-1", "1-0"]


def test_an_event_not_after_the_last_relayed_one_is_dropped():
    cursor = started_after("5-0")
    assert cursor.is_new(event("7-0"))
    assert not cursor.is_new(event("7-0"))
    assert not cursor.is_new(event("6-9"))
    assert cursor.is_new(event("7-1"))
    assert cursor.last_id == "7-1"


def test_stream_ids_compare_as_numbers_not_as_text():
    cursor = started_after("9-0")
    assert cursor.is_new(event("10-0"))
    cursor = started_after("5-9")
    assert cursor.is_new(event("5-10"))


def test_events_without_an_id_are_always_relayed_and_do_not_move_the_cursor():
    cursor = started_after("5-0")
    assert cursor.is_new(event(None)) and cursor.is_new(event(None))
    assert cursor.last_id == "5-0"
    assert ids(cursor.new_events([event("3-0"), event(None), event("6-0")])) == [None, "6-0"]


def test_a_gap_fill_overlapping_the_live_channel_relays_each_event_once():
    cursor = started_after("1-0")
    live = cursor.new_events([event("2-0"), event("3-0")])
    # The subscription dropped after 3-0; the history now holds 2-0 to 5-0.
    assert cursor.last_id == "3-0"
    filled = cursor.new_events([event("4-0"), event("5-0")])
    late_live = cursor.new_events([event("5-0"), event("6-0")])
    assert ids(live + filled + late_live) == ["2-0", "3-0", "4-0", "5-0", "6-0"]


def test_a_gap_fill_reads_after_the_last_relayed_id():
    cursor = started_after("1-0")
    cursor.new_events([event("2-0"), event(None), event("3-4")])
    assert cursor.last_id == "3-4"


def test_resync_only_when_the_history_no_longer_holds_the_last_relayed_id():
    cursor = started_after("1-0")
    cursor.is_new(event("3-0"))
    assert cursor.lost_events(history_holds_last_id=True) is None
    reason = cursor.lost_events(history_holds_last_id=False)
    assert reason == ("the history no longer holds event 3-0; "
                      "some events were lost, reload your state")


def test_nothing_can_be_lost_before_the_beginning_of_the_history():
    cursor = started_after(None)
    assert cursor.lost_events(history_holds_last_id=False) is None
    assert cursor.lost_events(history_holds_last_id=True) is None


def test_from_an_empty_start_redis_7s_count_of_entries_added_tells_whether_any_was_trimmed():
    cursor = RelayCursor(history_maxlen=100)
    cursor.start_after(None, StreamCount(length=0, added=40))  # emptied after 40 entries
    assert cursor.lost_events(True, StreamCount(length=100, added=140)) is None
    reason = cursor.lost_events(True, StreamCount(length=100, added=141))
    assert reason and "more events were written while the relay was away" in reason
    assert cursor.lost_events(True, StreamCount(length=0, added=40)) is None


def test_from_an_empty_start_without_entries_added_a_full_history_may_have_lost_some():
    """Redis 6 keeps no count of what was added: a history at its maxlen
    (writers trim to about that) may have dropped events; one below cannot."""
    cursor = RelayCursor(history_maxlen=100)
    cursor.start_after(None, StreamCount(length=0))
    assert cursor.lost_events(True, StreamCount(length=99)) is None
    assert cursor.lost_events(True, StreamCount(length=100)) is not None
    assert cursor.lost_events(True, StreamCount(length=0)) is None
