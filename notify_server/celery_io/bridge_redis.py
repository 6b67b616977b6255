"""In the bridge helper: Celery's events read straight off a Redis broker.

An adapter. On a Redis broker (`redis://`, `rediss://`, `unix://`,
`sentinel://`), Celery's event exchange is a Redis `PUBLISH` of kombu's JSON
envelope (`bridge_wire`). `RedisEventReader` subscribes to that channel
with a redis-py `PubSub` of its own, reads every message waiting (as many
as `MAX_BATCH` events) with `bridge_wire.events_of`, and hands them to the
forwarder together (`EventForwarder.on_events`), which writes them in one
batch. Between two reads, at least every `TURN` seconds, it calls
`EventForwarder.tick`. kombu's `EventReceiver` (used for other brokers)
does the same work per event, through kombu's consumer, message and
callback layers, at several times the CPU.

kombu still names the channel and makes the connection: the reader takes
the broker's pool, client class (kombu's `global_keyprefix`), fanout prefix
and `fanout_patterns` from a kombu Redis channel of the helper's app, so it
listens where the workers' kombu publishes, on the server Sentinel names
for a `sentinel://` broker.
"""

import logging
import time
from typing import Optional, Tuple, Type
from urllib.parse import urlsplit

from celery.utils.time import utcoffset

from notify_server.celery_io.bridge_wire import MalformedMessage, event_channel_pattern, events_of
from notify_server.celery_io.broker import broker_errors
from notify_server.redis_io.backoff import Backoff

log = logging.getLogger(__name__)

REDIS_SCHEMES = ("redis", "rediss", "unix", "sentinel")
# Seconds the reader waits for a message before it ticks the forwarder.
TURN = 0.2
# At most this many events are handed to the forwarder at once.
MAX_BATCH = 1000


def is_redis_broker(broker_url: str) -> bool:
    """Whether `broker_url` (or the first of a `;`-separated list) is a
    Redis broker kombu reaches with its Redis or Sentinel transport."""
    first = broker_url.split(";")[0].strip()
    return urlsplit(first).scheme.split("+")[-1] in REDIS_SCHEMES


class RedisEventReader:
    """Reads the event channel until the process ends; never returns.

    `forwarder` is the helper's `EventForwarder`: `connected()` after each
    (re)subscription, `tick()` on every turn, `on_events(list)` with what
    was read, `malformed(reason)` for each message that could not be read.
    A broker fault ends the subscription: it is logged once per outage and
    made again after a backoff. Runs on one thread.
    """

    def __init__(self, app, forwarder):
        self._app, self._forwarder = app, forwarder
        self._errors: Tuple[Type[BaseException], ...] = broker_errors(app.conf.broker_url)
        self._backoff = Backoff(base=0.2, cap=5.0)
        self._reconnected = False
        self._down_since: Optional[float] = None

    def run(self) -> None:
        while True:
            try:
                self._read_until_fault()
            except self._errors as exc:
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    log.warning("cannot read Celery events from the broker (%s: %s); "
                                "reconnecting", type(exc).__name__, exc)
                time.sleep(self._backoff.next_delay())

    def _read_until_fault(self) -> None:
        with self._app.connection_for_read() as connection:
            channel = connection.channel()
            pubsub = None
            try:
                pool = channel.pool  # (made first: it puts the db number in the fanout prefix)
                pattern = event_channel_pattern(channel.keyprefix_fanout,
                                                self._app.conf.event_exchange,
                                                channel.fanout_patterns)
                pubsub = channel.Client(connection_pool=pool).pubsub(
                    ignore_subscribe_messages=True)
                pubsub.psubscribe(pattern)
                # redis-py reconnects and subscribes again by itself after a
                # dropped connection; this callback says it did.
                pubsub.connection.register_connect_callback(self._on_connect)
                self._subscribed(connection)
                self._read(pubsub, connection)
            finally:
                if pubsub is not None:
                    pubsub.close()
                channel.close()

    def _subscribed(self, connection) -> None:
        if self._down_since is not None:
            log.warning("reading Celery events from the broker again after %.1f s",
                        time.monotonic() - self._down_since)
            self._down_since = None
        self._backoff.reset()
        self._reconnected = False
        self._forwarder.connected()
        # As Celery's receiver does: workers send a heartbeat at once.
        self._app.control.broadcast("heartbeat", connection=connection)

    def _read(self, pubsub, connection) -> None:
        forwarder = self._forwarder
        while True:
            if self._reconnected:
                self._subscribed(connection)
            forwarder.tick()
            message = pubsub.get_message(timeout=TURN)
            if message is None:
                continue
            here = utcoffset()
            events = self._events(message, here)
            while len(events) < MAX_BATCH:
                message = pubsub.get_message(timeout=0.0)
                if message is None:
                    break
                events.extend(self._events(message, here))
            if events:
                forwarder.on_events(events)

    def _events(self, message: dict, here: float) -> list:
        try:
            return events_of(message["data"], here)
        except MalformedMessage as exc:
            self._forwarder.malformed(exc.reason)
            return []

    def _on_connect(self, connection) -> None:
        self._reconnected = True
