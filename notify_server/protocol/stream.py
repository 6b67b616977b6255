"""Events as they come from Redis: one `Event` per history entry or channel
message, with its stream id. Pure (orjson only).

Workers write ``{"type", "data"}`` (docs/protocol.md, section 6); the relay
and the history parse it here, and the hub hands the `Event`s to sessions.
"""

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import orjson

from notify_server.protocol.framing import text_frame
from notify_server.protocol.task_events import WORKER_EVENTS, owner_text


class InvalidEvent(ValueError):
    """A payload on the events channel or stream that is not a protocol event."""


@dataclasses.dataclass
class Event:
    """One task event on its way to clients.

    `id` is the history stream id, or None for a bare PUBLISH; `key` is that
    id as (milliseconds, sequence), parsed once. `owner` decides who may see
    it (`auth.Scope.sees`) and is never sent to clients. `frame` is the
    message as a WebSocket text frame, built at most once however many
    clients receive it. A `public` event (about a worker, not a task) is
    for every client, whatever its scope or subscription. `meta` is what
    the emit script added for the metrics (the task's name, worker,
    runtime: docs/protocol.md 6.1), as written, or None; never sent either.
    """

    type: str
    data: dict
    id: Optional[str] = None
    owner: Optional[str] = None
    _frame: Optional[bytes] = dataclasses.field(default=None, repr=False, compare=False)
    key: Optional[Tuple[int, int]] = dataclasses.field(default=None, repr=False, compare=False)
    meta: Optional[dict] = dataclasses.field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.id is not None and self.key is None:
            self.key = parse_stream_id(self.id)

    @property
    def public(self) -> bool:
        return self.type in WORKER_EVENTS

    @property
    def frame(self) -> bytes:
        if self._frame is None:
            message = {"type": self.type, "data": self.data}
            if self.id is not None:
                message["id"] = self.id
            self._frame = text_frame(orjson.dumps(message))
        return self._frame


def parse_event(payload: bytes, stream_id: Optional[str] = None) -> Event:
    """Parse one event as workers write it (docs/protocol.md, section 6).

    `payload` is the JSON of ``{"type", "data"}`` (history entries) or
    ``{"id", "type", "data"}`` (channel messages), either with an optional
    ``"owner"`` (a string; a whole number is taken as its decimal string)
    and ``"meta"`` (kept when it is an object: its fields are the metrics' to check).
    `stream_id`, when given, overrides any id in the payload. Raises
    `InvalidEvent`, also for an owner of another type: such an event cannot
    be scoped, so it reaches nobody rather than everybody.
    """
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not JSON: {exc}") from None
    if not isinstance(message, dict):
        raise InvalidEvent("not a JSON object")
    kind, data = message.get("type"), message.get("data")
    if not isinstance(kind, str) or not kind:
        raise InvalidEvent("missing 'type'")
    if not isinstance(data, dict):
        raise InvalidEvent("'data' is not an object")
    event_id = stream_id if stream_id is not None else message.get("id")
    key = parse_stream_id(event_id) if event_id is not None else None
    if event_id is not None and key is None:
        raise InvalidEvent(f"malformed id {event_id!r}")
    owner = owner_text(message.get("owner"))
    if owner is None and message.get("owner") is not None:
        raise InvalidEvent("'owner' is not a string")
    meta = message.get("meta")
    return Event(type=kind, data=data, id=event_id, owner=owner, key=key,
                 meta=meta if isinstance(meta, dict) else None)


MAX_STREAM_PART = 2 ** 64 - 1


def parse_stream_id(value: Any) -> Optional[Tuple[int, int]]:
    """The (milliseconds, sequence) of a Redis stream id, or None if malformed."""
    if not isinstance(value, str):
        return None
    millis, _, sequence = value.partition("-")
    # ASCII digits only: str.isdigit() is also true for "²" or "١", which int() or Redis refuse.
    if not (millis.isascii() and millis.isdigit() and sequence.isascii() and sequence.isdigit()):
        return None
    key = int(millis), int(sequence)
    if key[0] > MAX_STREAM_PART or key[1] > MAX_STREAM_PART:
        return None  # Redis stream ids are two unsigned 64-bit numbers
    return key


def joined_frames(events: Sequence[Event]) -> bytes:
    """The frames of `events`, in order, as one write."""
    return events[0].frame if len(events) == 1 else b"".join(event.frame for event in events)


# What the live channel may carry: task and worker events. A message of
# another type (`queue_status`, `resync`, `error`, `task`, ...) is the
# server's own to send; published on the channel it is refused.
RELAYABLE_PREFIXES = ("task_", "worker_")


def relayable_type(kind: str) -> bool:
    """Whether an event of type `kind` may come from the channel."""
    return kind.startswith(RELAYABLE_PREFIXES)

