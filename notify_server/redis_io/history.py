"""Reads of the event history stream (docs/protocol.md, section 6), with redis.asyncio.

Used by the relay's gap fill, by client resumes and by the alert sender. Every call may raise
redis.exceptions.RedisError (or OSError) when Redis is unreachable; callers
decide what that means for them.
"""

import logging
from typing import AsyncIterator, Callable, List, Optional, Tuple

from redis.asyncio import Redis

from notify_server.protocol.stream import Event, InvalidEvent, parse_event

log = logging.getLogger(__name__)

BATCH = 500


class History:
    """Reads one history stream; an entry that is not a protocol event is
    logged, reported to `on_invalid()` and skipped."""

    def __init__(self, redis: Redis, stream: str, on_invalid: Callable[[], None] = lambda: None):
        self._redis, self._stream, self._on_invalid = redis, stream, on_invalid

    async def contains(self, event_id: str) -> bool:
        """Whether `event_id` is still retained in the history."""
        return bool(await self._redis.xrange(self._stream, event_id, event_id, count=1))

    async def first_id(self) -> Optional[str]:
        """The id of the oldest entry the history holds, None when it is empty."""
        entries = await self._redis.xrange(self._stream, "-", "+", count=1)
        return _decode(entries[0][0]) if entries else None

    async def last_id(self) -> Optional[str]:
        """The id of the newest entry, None when the history is empty."""
        entries = await self._redis.xrevrange(self._stream, "+", "-", count=1)
        return _decode(entries[0][0]) if entries else None

    async def wait_after(self, event_id: str, block: float,
                         count: int = BATCH) -> List[Tuple[str, Optional[Event]]]:
        """The entries after `event_id`, at most `count`, in stream order, as
        (entry id, event or None for one that is not an event); waits up to
        `block` seconds (XREAD BLOCK) while there is none, then returns []."""
        replies = await self._redis.xread({self._stream: event_id}, count=count,
                                          block=max(1, int(block * 1000)))
        entries = replies[0][1] if replies else []
        read = [(_decode(entry[0]), _to_event(entry)) for entry in entries]
        for _ in range(sum(1 for _, event in read if event is None)):
            self._on_invalid()
        return read

    async def after(self, event_id: str, count: int = BATCH) -> AsyncIterator[List[Event]]:
        """Yield, in batches of up to `count` entries and stream order, every
        event after `event_id`.

        Reads up to the end of the stream as it is when each batch is read, so
        events appended meanwhile are included. Entries that are not protocol
        events are logged and skipped.
        """
        cursor = event_id
        while True:
            entries = await self._redis.xrange(self._stream, f"({cursor}", "+", count=count)
            if not entries:
                return
            events = [event for event in map(_to_event, entries) if event is not None]
            for _ in range(len(entries) - len(events)):
                self._on_invalid()
            yield events
            cursor = _decode(entries[-1][0])
            if len(entries) < count:
                return


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _to_event(entry) -> Optional[Event]:
    entry_id, fields = _decode(entry[0]), entry[1]
    payload = fields.get(b"event", fields.get("event"))
    try:
        return parse_event(payload if payload is not None else b"", stream_id=entry_id)
    except InvalidEvent as exc:
        log.warning("skipping history entry %s: %s", entry_id, exc)
        return None
