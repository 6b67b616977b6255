"""The server's one Redis subscription: events from workers to the hub.

An adapter around redis.asyncio. It owns no client state; it calls
`on_events(batch)` with every event, once, in stream order, on the event loop.
Which events are new, where a gap fill starts and when clients must resync
are `relay_cursor.RelayCursor`'s rules; this module does the Redis I/O.
"""

import asyncio
import logging
import math
import time
from typing import Callable, List, Optional

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from notify_server.delivery.relay_cursor import START, RelayCursor, StreamCount
from notify_server.protocol.names import DEFAULT_HISTORY_MAXLEN, Keys
from notify_server.protocol.stream import Event, InvalidEvent, parse_event
from notify_server.redis_io.backoff import Backoff
from notify_server.redis_io.history import History

log = logging.getLogger(__name__)

# Messages relayed as one batch at most: bounds the latency of the first.
MAX_BATCH = 1000
# A quiet channel is fine: wake up this often to let redis-py send its health
# check PING, never to treat silence as failure (channels_redis#422).
IDLE_WAKEUP = 10.0
# Refused channel messages are logged at most once per this many seconds.
REFUSAL_LOG_EVERY = 10.0
# A relay whose newest event was older than this when it read it was behind.
BEHIND_MS = 200.0
# The relay notes the event loop's progress this often; a loop that made none
# for STALLED seconds (a stopped or starved process) up to STALL_MEMORY seconds
# before the subscription dropped may have left events unread.
TICK = 0.1
STALLED = 0.2
STALL_MEMORY = 3.0


class Relay:
    """Subscribes to the events channel and relays every event to `on_events`.
    `connect(**options)` makes a Redis client (`clients.RedisLocation.client`),
    a new one for every subscription: after a failover it reaches the new primary.

    Guarantees for events with an id (written per docs/protocol.md, "Redis"
    section): each is passed to `on_events` at most once and in stream order.
    Messages already waiting on the connection are passed as one batch. When
    the subscription drops, `run` reconnects with backoff and first relays, from
    the history, every event after the last id it relayed; if the history no
    longer holds that id (or, when it has relayed nothing since it began on
    an empty history, if the history may have been trimmed since:
    `RelayCursor.lost_events`), `on_resync(reason)` is called before the rest.
    Events published without an id are relayed live only.

    The same subscription carries the shared queue snapshot: messages on
    `keys.queue_channel` go to `on_snapshot(payload, True)`, and after every
    (re)subscription the latest one is read from `keys.queue_key` and passed
    on as `on_snapshot(payload, False)` (stored: maybe old), so a process
    that starts or reconnects has it at once.

    A (re)subscription that finds another Redis server than the one before
    (its `run_id`: a failover or a restart) calls `on_resync` only when
    something may be missing: when its history does not hold the last id
    relayed (clients were told of an event it lacks; replication and
    persistence keep a prefix of the stream, so holding it means holding
    everything before it), or when the relay was behind as the old server
    went away (it was still reading a backlog, its newest event was more
    than BEHIND_MS old, or its event loop had stalled for STALLED seconds):
    events the old server acknowledged may then have died unread in its
    output buffer. A relay that had read
    everything (it was waiting for the next message) has seen every event
    the old server acknowledged, so a restart or failover that kept its
    last event costs clients no `resync`.

    Malformed messages, and malformed history entries a gap fill skips, are
    logged and reported to `on_invalid()`. A well-formed message the channel
    may not carry (`RelayCursor.refusal`: not a task or worker event, or an
    id ahead of the history) is reported to `on_refused()` and logged at most
    once per REFUSAL_LOG_EVERY seconds.
    `on_connected(bool)` reports the subscription's state on each change;
    `subscribed_once` is set when the first subscription is in place.
    """

    def __init__(self, connect: Callable[..., Redis], keys: Keys,
                 on_events: Callable[[List[Event]], None],
                 on_resync: Callable[[str], None],
                 on_connected: Callable[[bool], None],
                 on_invalid: Callable[[], None] = lambda: None,
                 on_refused: Callable[[], None] = lambda: None,
                 on_snapshot: Callable[[bytes, bool], None] = lambda payload, live: None,
                 history_maxlen: int = DEFAULT_HISTORY_MAXLEN):
        self._connect, self._channel, self._stream = (connect, keys.events_channel,
                                                      keys.history_stream)
        self._snapshot_channel, self._snapshot_key = keys.queue_channel, keys.queue_key
        self._on_snapshot = on_snapshot
        self._snapshot_channel_bytes = self._snapshot_channel.encode()
        self._on_events, self._on_resync, self._on_connected = on_events, on_resync, on_connected
        self._on_invalid, self._on_refused = on_invalid, on_refused
        # Redis's clock minus this process's, in ms, measured at each subscribe.
        self._clock_offset_ms = 0.0
        self._refusals_logged_at = -math.inf
        self._refusals_unlogged = 0
        self._cursor = RelayCursor(history_maxlen)
        self._run_id: Optional[str] = None  # the Redis server of the last subscription
        # Whether the last read found nothing more waiting, and how old (ms) the
        # newest event relayed was when it was read; `_behind_when_lost` keeps
        # their verdict from the moment the subscription dropped.
        self._drained, self._lag_ms = True, 0.0
        self._behind_when_lost = False
        self._ticked_at = time.monotonic()
        self._stalled_at = -math.inf  # when the loop last resumed after a stall
        self._backoff = Backoff(base=0.1, cap=3.0)
        self.connected = False
        self.subscribed_once = asyncio.Event()

    async def run(self) -> None:
        """Relay until cancelled. Never raises: Redis failures and unexpected
        errors alike end in a resubscription with gap fill."""
        ticker = asyncio.ensure_future(self._tick())
        try:
            await self._run()
        finally:
            ticker.cancel()

    async def _tick(self) -> None:
        while True:
            now = time.monotonic()
            if now - self._ticked_at > STALLED:
                self._stalled_at = now
            self._ticked_at = now
            await asyncio.sleep(TICK)

    async def _run(self) -> None:
        while True:
            try:
                await self._subscribe_and_relay()
            except (RedisError, OSError) as exc:
                self._lost(exc)
            except Exception:  # a bug must not leave the server silently deaf
                log.exception("events relay failed; resubscribing")
                self._lost(RuntimeError("relay error"))
            await asyncio.sleep(self._backoff.next_delay())

    async def _subscribe_and_relay(self) -> None:
        redis = self._connect(socket_connect_timeout=2.0, socket_timeout=None,
                              retry=Retry(NoBackoff(), 0), health_check_interval=IDLE_WAKEUP)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        try:
            history = History(redis, self._stream, self._on_invalid)
            if not self._cursor.started:
                self._cursor.start_after(await _newest_id(redis, self._stream),
                                         await _stream_count(redis, self._stream))
            await pubsub.subscribe(self._channel, self._snapshot_channel)
            latest = await redis.get(self._snapshot_key)
            if latest is not None:
                self._on_snapshot(latest, False)
            resynced = await self._check_same_redis(redis)
            await self._measure_clock(redis)
            missed = await self._fill_gap(redis, history, resynced)
            self._subscribed(missed)
            self._drained, self._lag_ms = True, 0.0
            while True:
                message = await pubsub.get_message(timeout=IDLE_WAKEUP)
                batch: List[Event] = []
                try:
                    while message is not None:
                        self._drained = False
                        if message.get("type") == "message":
                            if message.get("channel") == self._snapshot_channel_bytes:
                                self._on_snapshot(message["data"], True)
                            else:
                                self._accept_payload(message["data"], batch)
                        if len(batch) >= MAX_BATCH:
                            break
                        message = await pubsub.get_message(timeout=0.0)
                    else:
                        self._drained = True
                finally:
                    # The cursor has moved past these: relay them even if the
                    # connection failed mid-batch, or the gap fill would skip them.
                    if batch:
                        self._note_lag(batch)
                        self._on_events(batch)
        finally:
            await pubsub.aclose()
            await redis.aclose()

    async def _check_same_redis(self, redis: Redis) -> bool:
        """On another Redis than before (a failover promoted a replica, or
        Redis restarted): resync everyone if the relay was behind when the
        old one went away; else only log (the gap fill that follows checks
        that the new one holds the last event relayed). True when it resynced."""
        run_id = (await redis.info("server")).get("run_id")
        resynced = False
        if self._run_id is not None and run_id != self._run_id:
            if self._behind_when_lost:
                self._on_resync("Redis was restarted or failed over while this server was still "
                                "reading its events; some may have been lost: reload your state")
                resynced = True
            else:
                log.info("Redis was restarted or failed over; the relay had read every event "
                         "(clients resync only if the new one lacks %s, the last relayed)",
                         self._cursor.last_id)
        self._run_id, self._behind_when_lost = run_id, False
        return resynced

    def _note_lag(self, batch: List[Event]) -> None:
        """How old the newest event of `batch` with an id was when it was read."""
        newest = max((event.key for event in batch if event.key is not None), default=None)
        if newest is not None:
            self._lag_ms = time.time() * 1000.0 + self._clock_offset_ms - newest[0]

    async def _measure_clock(self, redis: Redis) -> None:
        seconds, micros = await redis.time()
        self._clock_offset_ms = seconds * 1000.0 + micros / 1000.0 - time.time() * 1000.0

    async def _fill_gap(self, redis: Redis, history: History, resynced: bool) -> int:
        """Relay what the history holds after the cursor; resync first when
        it may lack events after it, unless this reconnect `resynced` already
        (one outage, one resync). Returns how many events it relayed."""
        missed = 0
        at_start = self._cursor.last_id == START
        lost = self._cursor.lost_events(
            at_start or await history.contains(self._cursor.last_id),
            await _stream_count(redis, self._stream) if at_start else None)
        if lost is not None and not resynced:
            self._on_resync(lost)
        async for stored in history.after(self._cursor.last_id):
            batch = self._cursor.new_events(stored)
            if batch:
                missed += len(batch)
                self._on_events(batch)
        return missed

    def _accept_payload(self, payload: bytes, batch: List[Event]) -> None:
        try:
            event = parse_event(payload)
        except InvalidEvent as exc:
            log.warning("ignoring malformed message on %s: %s", self._channel, exc)
            self._on_invalid()
            return
        refusal = self._cursor.refusal(event, time.time() * 1000.0 + self._clock_offset_ms)
        if refusal is not None:
            self._refuse(refusal)
        elif self._cursor.is_new(event):
            batch.append(event)

    def _refuse(self, reason: str) -> None:
        """Count a refused channel message; log at most one line per REFUSAL_LOG_EVERY s."""
        self._on_refused()
        now = time.monotonic()
        if now - self._refusals_logged_at < REFUSAL_LOG_EVERY:
            self._refusals_unlogged += 1
            return
        more = (f" ({self._refusals_unlogged} more refused since the last such line)"
                if self._refusals_unlogged else "")
        log.warning("refusing a message on %s: %s%s", self._channel, reason, more)
        self._refusals_logged_at, self._refusals_unlogged = now, 0

    def _subscribed(self, missed: int) -> None:
        if self._backoff.attempts:
            log.info("events subscription restored after %d attempt(s); relayed %d missed event(s)",
                     self._backoff.attempts, missed)
        self._backoff.reset()
        if not self.connected:
            log.info("events subscription up")
            self.connected = True
            self._on_connected(True)
        self.subscribed_once.set()

    def _lost(self, exc: BaseException) -> None:
        if self.connected:
            now = time.monotonic()
            stalled = now - self._ticked_at > STALLED or now - self._stalled_at < STALL_MEMORY
            self._behind_when_lost = not self._drained or self._lag_ms > BEHIND_MS or stalled
        if self.connected or self._backoff.attempts == 0:
            log.warning("events subscription lost (%s); reconnecting with backoff", exc)
        else:
            log.debug("events subscription still down: %s", exc)
        if self.connected:
            log.info("events subscription down")
            self.connected = False
            self._on_connected(False)


async def _stream_count(redis: Redis, stream: str) -> StreamCount:
    """The history's length and (Redis 7) `entries-added`; 0 and None when it does not exist."""
    try:
        info = await redis.xinfo_stream(stream)
    except ResponseError:  # no such key
        return StreamCount(0)
    added = info.get("entries-added", info.get(b"entries-added"))
    return StreamCount(int(info.get("length", info.get(b"length", 0))),
                       None if added is None else int(added))


async def _newest_id(redis: Redis, stream: str) -> Optional[str]:
    """The id of the newest entry in the history, or None when it is empty."""
    newest = await redis.xrevrange(stream, "+", "-", count=1)
    if not newest:
        return None
    entry_id = newest[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id
