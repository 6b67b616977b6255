"""Where the relay is in the event stream, and what follows from it.

Pure: no Redis, no asyncio. `relay.Relay` (the adapter) subscribes and reads
the history; `RelayCursor` decides which events are new, where a gap fill
starts and when clients must resync.
"""

from typing import Iterable, List, Optional

from notify_server.protocol.stream import Event, parse_stream_id, relayable_type

# The id before every stream entry: "relay everything the history holds".
START = "0-0"
# How far ahead of Redis's clock an id may be (the two clocks are compared
# at every subscribe; a real id is never ahead of the Redis that made it).
MAX_AHEAD_MS = 2000


class RelayCursor:
    """The id of the last event the relay passed on.

    Events with an id (written to the history, docs/protocol.md "Redis"
    section) are passed on once each and in stream order: one whose id is not
    after the last one passed on is a duplicate (the live channel and a gap
    fill overlap) and is dropped. Events without an id (a bare PUBLISH) are
    always passed on and do not move the cursor.
    """

    def __init__(self) -> None:
        self._last_id: Optional[str] = None
        self._last_key = (0, 0)

    @property
    def started(self) -> bool:
        """False until `start_after`: where to begin is not known yet."""
        return self._last_id is not None

    def start_after(self, newest_id: Optional[str]) -> None:
        """Begin after `newest_id`, the newest id in the history when the relay
        first subscribes (None: the history is empty, begin at START). Older
        events are the business of clients that resume, not of the relay."""
        self._last_id = newest_id or START
        self._last_key = parse_stream_id(self._last_id) or (0, 0)

    @property
    def last_id(self) -> str:
        """The id a gap fill reads after, and that the history must still hold."""
        if self._last_id is None:
            raise RuntimeError("the cursor has not started")
        return self._last_id

    def lost_events(self, history_holds_last_id: bool) -> Optional[str]:
        """The `resync` reason when events after `last_id` may be gone (the
        history no longer holds `last_id`: trimmed, or Redis lost its data),
        else None. Never at START: nothing before the first entry can be lost."""
        if self.last_id == START or history_holds_last_id:
            return None
        return (f"the history no longer holds event {self.last_id}; "
                "some events were lost, reload your state")

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
