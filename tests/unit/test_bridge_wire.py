"""Celery's events as kombu publishes them on a Redis broker, read back without kombu.

The messages here are made by Celery's own `EventDispatcher` through kombu's
virtual transport (the in-memory one: the envelope the Redis transport
publishes is the virtual transport's, caught where it would be PUBLISHed), and what `events_of` reads from
them is compared with what Celery's `EventReceiver` hands its handlers.
"""

import base64
import json
import random

import pytest
from celery import Celery
from celery.utils.time import utcoffset
from kombu.utils.json import dumps

from notify_server.celery_io.bridge_wire import MalformedMessage, event_channel_pattern, events_of


@pytest.fixture
def app():
    app = Celery("wire-test", broker="memory://", set_as_current=False)
    yield app
    app.close()


def published(app, send, buffer_group=None) -> list:
    """The kombu messages (JSON bytes, as PUBLISHed) that `send(dispatcher)` causes."""
    caught = []

    class Fanout:  # where kombu's Redis transport would PUBLISH the message
        def deliver(self, message, exchange, routing_key, **kwargs):
            caught.append((routing_key, dumps(message).encode()))

        def equivalent(self, *args):  # asked when the exchange is declared again
            return True

    with app.connection_for_write() as connection:
        connection.default_channel.typeof = lambda exchange, default="direct": Fanout()
        with app.events.Dispatcher(connection, hostname="w1@host",
                                   buffer_group=buffer_group) as dispatcher:
            send(dispatcher)
            dispatcher.flush()
            assert not dispatcher._outbound_buffer  # nothing failed to send
    return caught


def as_celery_receives(app, data: bytes) -> list:
    """What Celery's EventReceiver hands its handlers for one message, without
    the receiver's own clock and arrival time."""
    receiver = app.events.Receiver(None, handlers={})
    envelope = json.loads(data)
    body = json.loads(base64.b64decode(envelope["body"]))
    found = []
    for event in body if isinstance(body, list) else [body]:
        _, event = receiver.event_from_message(event)
        event.pop("local_received")
        found.append(event)
    return found


def test_one_event_reads_as_celery_receives_it(app):
    [(routing_key, data)] = published(app, lambda d: d.send(
        "task-succeeded", uuid="t-1", result="'done'", runtime=0.5))
    assert routing_key == "task.succeeded"
    [event] = events_of(data, utcoffset())
    assert event == as_celery_receives(app, data)[0]
    assert (event["type"], event["uuid"], event["hostname"]) == ("task-succeeded", "t-1", "w1@host")


def test_a_task_multi_list_reads_as_its_events_in_order(app):
    def send(dispatcher):
        for n in range(30):
            dispatcher.send("task-received", uuid=f"t-{n}", args=f"['A-{n}']", kwargs="{}")
    messages = published(app, send, buffer_group=["task"])
    assert {key for key, _ in messages} == {"task.multi"} and len(messages) == 2  # 24 + 6
    read = [event for _, data in messages for event in events_of(data, utcoffset())]
    assert [event["uuid"] for event in read] == [f"t-{n}" for n in range(30)]
    assert read == [event for _, data in messages for event in as_celery_receives(app, data)]


def test_a_worker_in_another_zone_has_its_timestamp_moved_as_celery_moves_it(app):
    [(_, data)] = published(app, lambda d: d.send("worker-heartbeat", freq=2.0))
    [sent] = events_of(data, utcoffset())
    [moved] = events_of(data, utcoffset() - 2)
    assert moved["timestamp"] == pytest.approx(sent["timestamp"] - 2 * 3600)


@pytest.mark.parametrize("prefix, patterns, pattern", [
    ("/0.", True, "/0.celeryev/*"),          # kombu's defaults, database 0
    ("/3.", True, "/3.celeryev/*"),
    ("", True, "celeryev/*"),                # fanout_prefix=False
    ("custom.", False, "custom.celeryev"),   # a prefix of its own, fanout_patterns=False
])
def test_the_channel_pattern_is_kombus(prefix, patterns, pattern):
    assert event_channel_pattern(prefix, "celeryev", patterns) == pattern


def envelope(event, **changes) -> bytes:
    message = {"body": base64.b64encode(json.dumps(event).encode()).decode(),
               "content-encoding": "utf-8", "content-type": "application/json",
               "headers": {"hostname": "w1@host"},
               "properties": {"body_encoding": "base64", "delivery_tag": "x"}}
    message.update(changes)
    return json.dumps(message).encode()


@pytest.mark.parametrize("data, reason", [
    (b"\xff not json", "not JSON"),
    (b"[1, 2]", "not a kombu message"),
    (envelope({"type": "task-started"}, **{"content-type": "application/x-python-serialize"}),
     "not serialized as JSON (set event_serializer to json)"),
    (envelope({"type": "task-started"}, headers={"compression": "application/x-gzip"}),
     "compressed"),
    (envelope({"type": "task-started"}, properties={"body_encoding": "rot13"}),
     "an unknown body encoding"),
    (envelope({"type": "task-started"}, body="%%% not base64"), "a body that is not base64"),
    (envelope({"type": "task-started"}, body=base64.b64encode(b"{oops").decode()),
     "a body that is not JSON"),
    (envelope([{"type": "task-started"}, 7]), "an event without a type"),
    (envelope({"uuid": "t-1"}), "an event without a type"),
])
def test_a_malformed_message_raises_malformed_with_its_reason(data, reason):
    with pytest.raises(MalformedMessage) as raised:
        events_of(data, 0)
    assert raised.value.reason == reason


def test_no_corruption_of_a_message_raises_anything_but_malformed(app):
    [(_, data)] = published(app, lambda d: d.send("task-received", uuid="t-1", args="['A']"))
    rng = random.Random(7)
    for _ in range(2000):
        corrupt = bytearray(data)
        for _ in range(rng.randint(1, 5)):
            corrupt[rng.randrange(len(corrupt))] = rng.randrange(256)
        cut = corrupt[:rng.randrange(len(corrupt) + 1)] if rng.random() < 0.3 else corrupt
        try:
            events_of(bytes(cut), 0)
        except MalformedMessage:
            pass
