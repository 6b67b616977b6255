"""The bridge helper's forwarder, with its emitter and pipe replaced: what a batch
of Celery events read together becomes, and how unreadable messages are told."""

import logging
import types

from notify_server.celery_io.bridge_helper import BridgeOptions, EventForwarder
from notify_server.config import CeleryConfig, RedisConfig


class Emitter:
    def __init__(self):
        self.batches = []
        self.written = self.duplicates = 0

    def emit_many(self, items):
        batch = list(items)
        if batch:
            self.batches.append(batch)
            self.written += len(batch)


class Pipe(list):
    def send(self, message):
        self.append((message, self.emitter.written))


def forwarder(leading=1):
    emitter, pipe = Emitter(), Pipe()
    pipe.emitter = emitter
    options = BridgeOptions(celery=CeleryConfig(), broker_master=None, redis=RedisConfig(),
                            replay_window=4.0)
    return EventForwarder(None, options, emitter, types.SimpleNamespace(value=leading),
                          pipe), emitter, pipe


def task(kind, n, **fields):
    return {"type": kind, "uuid": f"t-{n}", "hostname": "w1@host", "timestamp": 10.0 + n,
            **fields}


def test_the_events_of_one_read_are_written_in_one_batch_in_their_order():
    bridge, emitter, _ = forwarder()
    bridge.on_events([task("task-received", n, args=f"['A-{n}']", kwargs="{}", retries=0)
                      for n in range(3)] + [task("task-started", 0), task("task-succeeded", 0)])
    [batch] = emitter.batches
    assert [(message["type"], message["data"]["task_id"]) for message, _, _ in batch] == [
        ("task_received", "t-0"), ("task_received", "t-1"), ("task_received", "t-2"),
        ("task_started", "t-0"), ("task_completed", "t-0")]
    assert [once for _, once, _ in batch][-1] == "t-0:task_completed:0"


def test_a_follower_writes_nothing_and_a_batch_without_protocol_events_writes_nothing():
    bridge, emitter, _ = forwarder(leading=0)
    bridge.on_events([task("task-received", 1, args="['A']", kwargs="{}")])
    bridge, emitter_too, _ = forwarder()
    bridge.on_events([{"type": "task-sent", "uuid": "t-1"}, {"type": "something-else"}])
    assert emitter.batches == [] and emitter_too.batches == []


def test_the_worker_table_goes_to_the_server_after_the_batch_that_moved_it_is_written():
    bridge, emitter, pipe = forwarder()
    bridge.on_events([{"type": "worker-online", "hostname": "w1@host", "timestamp": 5.0,
                       "freq": 2.0}, task("task-received", 1, args="['A']", kwargs="{}")])
    [((kind, workers, counts), written_before)] = pipe
    assert kind == "table" and [w["name"] for w in workers] == ["w1@host"]
    assert written_before == 2 and counts["written"] == 2 and counts["malformed"] == 0


def test_an_event_the_mapper_chokes_on_is_skipped_and_the_rest_of_the_batch_written(caplog):
    bridge, emitter, _ = forwarder()
    task_event = bridge._mapper.task_event

    def buggy(event):
        if event["uuid"] == "t-1":
            raise RuntimeError("a bug")
        return task_event(event)
    bridge._mapper.task_event = buggy
    bridge.on_events([task("task-started", n) for n in range(3)])
    assert [message["data"]["task_id"] for message, _, _ in emitter.batches[0]] == ["t-0", "t-2"]
    assert sum("could not be bridged" in r.getMessage() for r in caplog.records) == 1


def test_unreadable_messages_are_counted_and_logged_once_per_reason(caplog):
    caplog.set_level(logging.WARNING)
    bridge, _, pipe = forwarder()
    for reason in ("not JSON", "not JSON", "compressed"):
        bridge.malformed(reason)
    logged = [r.getMessage() for r in caplog.records if "was skipped" in r.getMessage()]
    assert len(logged) == 2 and "not JSON" in logged[0] and "compressed" in logged[1]
    bridge.tick()
    assert pipe[-1][0][2]["malformed"] == 3
