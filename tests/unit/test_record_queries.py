"""Task list queries: their parameters checked, their bounds, their cursors (pure)."""

import pytest

from notify_server.records.query import (QueryError, TaskQuery, decode_cursor, encode_cursor,
                                         parse_query)
from notify_server.records.record import render, timeline


def args(**values):
    return {name: [value.encode()] for name, value in values.items()}


@pytest.mark.parametrize("given, parameter", [
    (args(bogus="1"), "bogus"),
    (args(limit="0"), "limit"), (args(limit="201"), "limit"), (args(limit="10e2"), "limit"),
    (args(limit="-5"), "limit"), (args(status="done"), "status"),
    (args(since="-1"), "since"), (args(until="nan"), "until"), (args(since="1e300"), "since"),
    (args(since="20", until="10"), "since"), (args(cursor="!!"), "cursor"),
    (args(cursor=encode_cursor("not a sort key")), "cursor"), (args(name=""), "name"),
    (args(q="x" * 201), "q"), ({"status": [b"failed", b"success"]}, "status"),
    ({"worker": [b"\xff"]}, "worker"),
])
def test_a_bad_parameter_is_named(given, parameter):
    with pytest.raises(QueryError) as raised:
        parse_query(given)
    assert raised.value.parameter == parameter and str(raised.value).startswith(parameter + ":")


def test_a_good_query_and_its_bounds():
    cursor = encode_cursor("1796000000123-000004 task-1")
    query = parse_query(args(status="failed", name="tasks.dl", since="1796000000",
                             until="1796000000.5", limit="10", cursor=cursor, token="x"))
    assert (query.status, query.name, query.limit) == ("failed", "tasks.dl", 10)
    assert query.cursor == decode_cursor(cursor) == "1796000000123-000004 task-1"
    assert query.lower == "[1796000000000"
    # The cursor is below the `until` bound, so the page starts below the cursor.
    assert query.upper == "(1796000000123-000004 task-1"
    assert TaskQuery(until=1796000000.5).upper == "(1796000000501"
    assert TaskQuery().upper == "+" and TaskQuery().lower == "-"


def test_a_record_is_rendered_without_its_owner():
    record = render({"sort": "1796000000123-000004 t 1", "owner": "alice", "avid": '"S-1"',
                     "status": "failed", "attempt": "2", "started_at": "1.5",
                     "last_id": "1-1", "progress": "not json"},
                    "task_started 1.500000 1-0\ntask_failed 2.000000 1-1\n")
    assert record["task_id"] == "t 1" and "owner" not in record and record["avid"] == "S-1"
    assert (record["retries"], record["started_at"], record["progress"]) == (2, 1.5, None)
    assert record["events"] == [{"type": "task_started", "time": 1.5, "id": "1-0"},
                                {"type": "task_failed", "time": 2.0, "id": "1-1"}]
    assert render({}) is None and timeline("garbage\n") == []
