"""Where the relay is in the event stream, and what follows from it.

Pure: no Redis, no asyncio. `relay.Relay` (the adapter) subscribes and reads
the history; `RelayCursor` decides which events are new, where a gap fill
starts and when clients must resync.
"""

import dataclasses
from typing import Iterable, List, Optional

from notify_server.protocol.names import DEFAULT_HISTORY_MAXLEN
from notify_server.protocol.stream import Event, parse_stream_id, relayable_type

# The id before every stream entry: "relay everything the history holds".
START = "0-0"
# How far ahead of Redis's clock an id may be (the two clocks are compared
# at every subscribe; a real id is never ahead of the Redis that made it).
MAX_AHEAD_MS = 2000


@dataclasses.dataclass(frozen=True)
class StreamCount:
    """What Redis says of the history's size (`XINFO STREAM`): `length`
    entries held now, and `added`, every entry ever added (Redis 7's
    `entries-added`; None on older Redis)."""

    length: int
    added: Optional[int] = None


class RelayCursor:
    """The id of the last event the relay passed on.

    Events with an id (written to the history, docs/protocol.md "Redis"
    section) are passed on once each and in stream order: one whose id is not
    after the last one passed on is a duplicate (the live channel and a gap
    fill overlap) and is dropped. Events without an id (a bare PUBLISH) are
    always passed on and do not move the cursor.
    """

    def __init__(self, history_maxlen: int = DEFAULT_HISTORY_MAXLEN) -> None:
        self._last_id: Optional[str] = None
        self._last_key = (0, 0)
        self._maxlen = history_maxlen
        self._added_at_start: Optional[int] = None

    @property
    def started(self) -> bool:
        """False until `start_after`: where to begin is not known yet."""
        return self._last_id is not None

    def start_after(self, newest_id: Optional[str], count: StreamCount = StreamCount(0)) -> None:
        """Begin after `newest_id`, the newest id in the history when the relay
        first subscribes (None: the history is empty, begin at START), whose
        size was then `count`. Older events are the business of clients that
        resume, not of the relay."""
        self._last_id = newest_id or START
        self._last_key = parse_stream_id(self._last_id) or (0, 0)
        self._added_at_start = count.added if count.added is not None else 0

    @property
    def last_id(self) -> str:
        """The id a gap fill reads after, and that the history must still hold."""
        if self._last_id is None:
            raise RuntimeError("the cursor has not started")
        return self._last_id

    def lost_events(self, history_holds_last_id: bool,
                    count: Optional[StreamCount] = None) -> Optional[str]:
        """The `resync` reason when events after `last_id` may be gone, else None.

        After an id: when the history no longer holds it (trimmed, or Redis
        lost its data). At START (the history was empty when the relay
        began, and no event has come since), `count` (the history's size
        now) tells: with Redis 7's `entries-added`, events were lost when
        more were added since the start than the history holds; without
        it, when the history is at its `history_maxlen` (writers trim to
        keep about that many: it may have dropped some)."""
        if self.last_id != START:
            if history_holds_last_id:
                return None
            return (f"the history no longer holds event {self.last_id}; "
                    "some events were lost, reload your state")
        if count is None:
            return None
        if count.added is not None:
            trimmed = count.added - (self._added_at_start or 0) > count.length
        else:
            trimmed = count.length >= self._maxlen
        if not trimmed:
            return None
        return ("more events were written while the relay was away than the history keeps; "
                "some were lost, reload your state")

    def refusal(self, event: Event, redis_now_ms: float) -> Optional[str]:
        """Why a channel message may not be relayed, or None: its type is not
        a task's or a worker's event, or its id is ahead of the history (later
        than Redis's clock, `redis_now_ms`: relaying it would make every real
        event until then look like a duplicate)."""
        if not relayable_type(event.type):
            return f"type {event.type[:64]!r} is not a task or worker event"
        if event.key is not None and event.key[0] > redis_now_ms + MAX_AHEAD_MS:
            return f"id {event.id} is ahead of the history"
        return None

    def is_new(self, event: Event) -> bool:
        """True for an event not passed on before; records its id as the last."""
        if event.key is None:
            return True
        if event.key <= self._last_key:
            return False
        self._last_id, self._last_key = event.id, event.key
        return True

    def new_events(self, events: Iterable[Event]) -> List[Event]:
        """The events of `events` not passed on before, in their order."""
        return [event for event in events if self.is_new(event)]
