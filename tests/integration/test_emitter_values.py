"""The emitter never raises, also for values JSON cannot encode (a real redis-server)."""

import logging
import uuid

import orjson
import redis

from notify_server.protocol import task_events as ev
from notify_server.protocol.names import Keys
from notify_server.worker.emitter import Emitter


class Opaque:
    def __repr__(self):
        return "<Opaque>"


class Broken:
    def __str__(self):
        raise RuntimeError("no text")


def test_values_json_cannot_encode_are_written_as_text_and_logged_once_per_type(
        redis_server, caplog):
    prefix = f"values-{uuid.uuid4().hex[:8]}"
    emitter = Emitter(redis_server.url, prefix=prefix)
    caplog.set_level(logging.WARNING, logger="notify_server.worker.emitter")
    emitter.emit(ev.task_progress("t", Opaque(), Opaque(), {1, 2}, "half"))
    emitter.emit(ev.task_completed("t", "S-1", Broken()))
    emitter.emit(ev.task_progress("t", "S-1", Opaque(), 10 ** 30, "again"))
    assert emitter.flush()
    assert (emitter.written, emitter.dropped) == (3, 0)
    history = redis.Redis.from_url(redis_server.url).xrange(Keys(prefix).history_stream)
    data = [orjson.loads(fields[b"event"])["data"] for _, fields in history]
    assert (data[0]["avid"], data[0]["current"], data[0]["total"], data[0]["percent"]) == (
        "<Opaque>", "<Opaque>", "{1, 2}", 0.0)
    assert data[1]["message"] == "<class 'tests.integration.test_emitter_values.Broken'>"
    assert data[2]["total"] == str(10 ** 30)
    warned = [record.getMessage() for record in caplog.records]
    assert len([text for text in warned if "Opaque" in text]) == 1
    assert len([text for text in warned if "set" in text]) == 1
    assert len([text for text in warned if " int," in text]) == 1


def test_a_batch_is_written_in_order_once_per_key_and_survives_a_flushed_script_cache(
        redis_server):
    """`emit_many`: 601 events (two round trips of at most 500 scripts), a
    key repeated inside the batch refused, and after SCRIPT FLUSH the next
    batch is still written whole and in order."""
    prefix = f"batch-{uuid.uuid4().hex[:8]}"
    emitter = Emitter(redis_server.url, prefix=prefix)
    client = redis.Redis.from_url(redis_server.url)

    def started(n):
        return ev.task_started(f"t-{n}", f"S-{n}"), f"t-{n}:task_started:0", None
    emitter.emit_many([started(n) for n in range(600)] + [started(7)])
    assert emitter.flush()
    assert (emitter.written, emitter.duplicates, emitter.pending) == (600, 1, 0)
    client.script_flush()
    emitter.emit_many([started(n) for n in range(600, 900)])
    assert emitter.flush()
    assert (emitter.written, emitter.duplicates, emitter.pending) == (900, 1, 0)
    history = client.xrange(Keys(prefix).history_stream)
    assert [orjson.loads(fields[b"event"])["data"]["task_id"] for _, fields in history] == [
        f"t-{n}" for n in range(900)]


def test_a_lone_surrogate_is_written_as_a_question_mark_and_emit_does_not_raise(redis_server):
    # "\ud800" is a str Python holds and UTF-8 cannot (a message decoded with
    # errors="surrogateescape", say): encoding it raised from emit before.
    prefix = f"surrogate-{uuid.uuid4().hex[:8]}"
    emitter = Emitter(redis_server.url, prefix=prefix)
    emitter.emit(ev.task_completed("t", "S-\ud800", "done \udcff"))
    emitter.emit(ev.task_progress("t", "S-1", 1, 2, "after"))
    assert emitter.flush()
    history = redis.Redis.from_url(redis_server.url).xrange(Keys(prefix).history_stream)
    data = [orjson.loads(fields[b"event"])["data"] for _, fields in history]
    assert (data[0]["avid"], data[0]["message"]) == ("S-?", "done ?")
    assert data[1]["message"] == "after"
