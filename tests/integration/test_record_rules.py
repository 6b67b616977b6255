"""The record rules of the emit script (docs/protocol.md 6.5), run by a real redis-server.

Each test writes events through `Emitter` (the script workers run) under its
own prefix and reads the record back as the server does (`TaskRecords`).
"""

import asyncio
import time
import uuid

import pytest
import redis
import redis.asyncio

from notify_server.access.auth import Scope
from notify_server.config import RecordsConfig
from notify_server.protocol import task_events as ev
from notify_server.protocol.names import Keys
from notify_server.records.query import TaskQuery
from notify_server.redis_io.records import TaskRecords
from tests.support.written_emitter import WrittenEmitter


@pytest.fixture
def prefix():
    return f"rules-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def emitter(redis_server, prefix):
    return WrittenEmitter(redis_server.url, prefix=prefix)


def read(url, prefix, task_id, config=RecordsConfig()):
    async def get():
        client = redis.asyncio.Redis.from_url(url)
        try:
            return await TaskRecords(client, Keys(prefix), config).get(task_id)
        finally:
            await client.aclose()
    found = asyncio.run(get())
    return None if found is None else found[1]


def run(url, prefix, call, config=RecordsConfig()):
    async def go():
        client = redis.asyncio.Redis.from_url(url)
        try:
            return await call(TaskRecords(client, Keys(prefix), config))
        finally:
            await client.aclose()
    return asyncio.run(go())


def history_ids(url, prefix, task_id):
    client = redis.Redis.from_url(url)
    entries = client.xrange(Keys(prefix).history_stream)
    return [entry_id.decode() for entry_id, fields in entries
            if f'"task_id":"{task_id}"'.encode() in fields[b"event"]]


def test_a_late_received_does_not_move_a_started_task_back(redis_server, prefix, emitter):
    emitter.emit(ev.task_started("t", "S-1"), record={"attempt": 0, "time": 100.0,
                                                     "name": "tasks.dl", "worker": "w1"})
    emitter.emit(ev.task_received("t", "S-1", "w1"), record={"attempt": 0, "time": 99.0})
    record = read(redis_server.url, prefix, "t")
    assert record["status"] == "started"
    assert (record["received_at"], record["started_at"]) == (99.0, 100.0)
    assert [e["type"] for e in record["events"]] == ["task_started", "task_received"]
    assert record["last_id"] == record["events"][-1]["id"] == history_ids(
        redis_server.url, prefix, "t")[-1]


def test_a_finished_record_is_not_reopened_by_a_late_progress(redis_server, prefix, emitter):
    emitter.emit(ev.task_started("t", 1), record={"attempt": 0, "time": 10.0})
    emitter.emit(ev.task_progress("t", 1, 1, 4, "a quarter"), record={"time": 11.0})
    emitter.emit(ev.task_completed("t", 1, "done"), record={"attempt": 0, "time": 12.5})
    emitter.emit(ev.task_progress("t", 1, 2, 4, "late"), record={"time": 13.0})
    record = read(redis_server.url, prefix, "t")
    assert record["status"] == "success" and record["message"] == "done"
    assert record["progress"] == {"current": 1, "total": 4, "percent": 25.0,
                                  "message": "a quarter"}
    assert (record["finished_at"], record["runtime"]) == (12.5, 2.5)
    assert [e["type"] for e in record["events"]][-1] == "task_progress"


def test_a_retry_opens_a_new_attempt(redis_server, prefix, emitter):
    emitter.emit(ev.task_started("t", "x"), record={"attempt": 0, "time": 1.0})
    emitter.emit(ev.task_retrying("t", "x", "Retry in 1s"), record={"attempt": 0, "time": 2.0})
    emitter.emit(ev.task_started("t", "x"), record={"attempt": 1, "time": 3.0})
    record = read(redis_server.url, prefix, "t")
    assert (record["status"], record["retries"], record["started_at"]) == ("started", 1, 3.0)
    assert record["message"] is None and record["finished_at"] is None
    # A late event of the old attempt only joins the timeline.
    emitter.emit(ev.task_failed("t", "x", "old"), record={"attempt": 0, "time": 3.5})
    emitter.emit(ev.task_completed("t", "x", "ok"), record={"attempt": 1, "time": 4.0})
    record = read(redis_server.url, prefix, "t")
    assert (record["status"], record["message"], record["runtime"]) == ("success", "ok", 1.0)
    assert [e["type"] for e in record["events"]] == [
        "task_started", "task_retrying", "task_started", "task_failed", "task_completed"]


def test_the_timeline_keeps_the_newest_entries_and_counts_the_dropped(redis_server, prefix,
                                                                       emitter):
    emitter.emit(ev.task_started("t", "x"), record={"attempt": 0})
    for step in range(60):
        emitter.emit(ev.task_progress("t", "x", step, 60, ""))
    record = read(redis_server.url, prefix, "t")
    assert len(record["events"]) == 50 and record["events_dropped"] == 11
    assert record["events"][-1]["id"] == record["last_id"] == history_ids(
        redis_server.url, prefix, "t")[-1]
    assert record["progress"]["current"] == 59


def test_the_owner_is_kept_but_never_shown_and_scopes_the_lookup(redis_server, prefix, emitter):
    emitter.emit(ev.with_owner(ev.task_started("t", "x"), "alice"), record={"attempt": 0})
    record = read(redis_server.url, prefix, "t")
    assert "owner" not in record and "alice" not in str(record)

    alice, bob = Scope(owners=frozenset({"alice"})), Scope(owners=frozenset({"bob"}))
    assert run(redis_server.url, prefix, lambda r: r.find("t", alice))["task_id"] == "t"
    assert run(redis_server.url, prefix, lambda r: r.find("t", bob)) is None


def test_past_the_maximum_the_oldest_finished_but_not_failed_go_first(redis_server, prefix,
                                                                        emitter):
    config = RecordsConfig(max_records=4)
    run(redis_server.url, prefix, lambda r: r.configure(), config)
    for name, finish in (("failed-1", ev.task_failed), ("ok-1", ev.task_completed),
                         ("running-1", None), ("ok-2", ev.task_completed)):
        emitter.emit(ev.task_started(name, 1), record={"attempt": 0})
        if finish is not None:
            emitter.emit(finish(name, 1, "x"), record={"attempt": 0})
    for name in ("new-1", "new-2", "new-3"):
        emitter.emit(ev.task_started(name, 1), record={"attempt": 0})
    page, _ = run(redis_server.url, prefix, lambda r: r.page(TaskQuery(), None), config)
    # ok-1 and ok-2 went first (finished, not failed), then the oldest failed one.
    assert [record["task_id"] for _, record in page] == ["new-3", "new-2", "new-1",
                                                         "running-1"]


def test_the_sweep_removes_records_past_their_retention_and_their_index_entries(
        redis_server, prefix, emitter):
    config = RecordsConfig(retention=60, failed_retention=600)
    run(redis_server.url, prefix, lambda r: r.configure(), config)
    emitter.emit(ev.task_completed("ok", 1, "x"), record={"attempt": 0})
    emitter.emit(ev.task_failed("bad", 1, "x"), record={"attempt": 0})
    later = time.time() + 120
    assert run(redis_server.url, prefix, lambda r: r.sweep(now=later), config) == 1
    page, _ = run(redis_server.url, prefix, lambda r: r.page(TaskQuery(), None), config)
    assert [record["task_id"] for _, record in page] == ["bad"]
    failed, _ = run(redis_server.url, prefix,
                    lambda r: r.page(TaskQuery(status="success"), None), config)
    assert failed == []
    assert run(redis_server.url, prefix, lambda r: r.sweep(now=later + 600), config) == 1
    assert read(redis_server.url, prefix, "bad") is None


def test_worker_events_and_events_without_a_task_id_keep_no_record(redis_server, prefix,
                                                                    emitter):
    emitter.emit(ev.worker_online("w1", 1.0))
    emitter.emit({"type": "task_started", "data": {"avid": 1, "status": "started"}})
    emitter.emit(ev.task_started("marker", 1), record={"attempt": 0})
    page, _ = run(redis_server.url, prefix, lambda r: r.page(TaskQuery(), None))
    assert [record["task_id"] for _, record in page] == ["marker"]


def test_the_script_writes_exactly_the_keys_the_server_reads(redis_server, prefix, emitter):
    emitter.emit(ev.with_owner(ev.task_started("t", 1), "alice"), record={"attempt": 0})
    emitter.emit(ev.with_owner(ev.task_failed("t", 1, "x"), "alice"),
                 record={"attempt": 0, "time": 600.0})
    keys = Keys(prefix)
    client = redis.Redis.from_url(redis_server.url)
    written = {key.decode() for key in client.scan_iter(match=f"{prefix}:*")}
    assert written == {keys.history_stream, keys.record("t"), keys.record_events("t"),
                       keys.all_records,
                       keys.status_records("failed"), keys.owner_records("alice"),
                       keys.status_records("failed", "alice"), keys.minute_counts(10)}
    assert client.hgetall(keys.minute_counts(10)) == {b"failed": b"1", b"failed:alice": b"1"}


def test_a_retention_of_a_fraction_of_a_second_is_kept_as_given(redis_server, prefix, emitter):
    config = RecordsConfig(retention=1.5, failed_retention=1.5)
    run(redis_server.url, prefix, lambda r: r.configure(), config)
    emitter.emit(ev.task_completed("t", 1, "x"), record={"attempt": 0})
    assert (emitter.written, emitter.pending) == (1, 0)
    first_written = time.time()
    assert run(redis_server.url, prefix, lambda r: r.sweep(now=first_written + 1.0), config) == 0
    assert run(redis_server.url, prefix, lambda r: r.sweep(now=first_written + 2.0), config) == 1
