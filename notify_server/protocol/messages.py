"""The wire protocol as plain data: building, encoding and parsing messages.

Nothing here does I/O. Server-to-client messages are dicts
``{"type": T, "data": {...}}`` (plus ``"id"`` for events from the history),
encoded once with orjson. Client-to-server frames are parsed into an `Action`
or rejected with a `ProtocolError` that carries a stable error code.
"""

import dataclasses
from typing import Any, Optional, Tuple

import orjson

# The task events are the workers' to build (`events` is stdlib-only, so a
# worker needs no server dependency); re-exported here for the server side.
from notify_server.protocol.task_events import (TASK_COMPLETED, TASK_FAILED, TASK_PROGRESS, TASK_RECEIVED,
                     TASK_REJECTED, TASK_RETRYING, TASK_REVOKED, TASK_STARTED, WORKER_EVENTS,
                     WORKER_OFFLINE, WORKER_ONLINE, owner_text, safe_text, task_completed, task_failed,
                     task_progress, task_retrying, task_revoked, task_started)
from notify_server.protocol.framing import text_frame

QUEUE_STATUS = "queue_status"
PONG = "pong"
ERROR = "error"
RESYNC = "resync"
REFRESHED = "refreshed"

# WebSocket close codes the server uses.
CLOSE_GOING_AWAY = 1001   # server shutting down: reconnect (to another process)
CLOSE_TOO_BIG = 1009      # inbound frame over the size limit (Tornado sends it)
CLOSE_POLICY = 1008       # the client kept sending actions over its rate limit
CLOSE_INTERNAL_ERROR = 1011  # the server failed to deliver to this socket: reconnect, resume
CLOSE_UNAUTHORIZED = 4001  # no valid token, or it expired: get a new one, then reconnect
CLOSE_SLOW = 4008         # the client did not read fast enough; its backlog was dropped

# Stable error codes of `error` replies (docs/protocol.md, section 2.4).
INVALID_JSON = "invalid_json"
NOT_AN_OBJECT = "not_an_object"
BINARY_NOT_SUPPORTED = "binary_not_supported"
MISSING_ACTION = "missing_action"
UNKNOWN_ACTION = "unknown_action"
INVALID_ARGUMENT = "invalid_argument"
RESUME_IN_PROGRESS = "resume_in_progress"
RATE_LIMITED = "rate_limited"
INVALID_TOKEN = "invalid_token"
AUTH_DISABLED = "auth_disabled"


def queue_status(data: dict) -> dict:
    return {"type": QUEUE_STATUS, "data": data}


def pong(server_time: float) -> dict:
    return {"type": PONG, "data": {"time": server_time}}


def error(code: str, message: str) -> dict:
    return {"type": ERROR, "data": {"code": code, "message": message}}


def resync(reason: str) -> dict:
    return {"type": RESYNC, "data": {"reason": reason}}


def refreshed(expires_at: float) -> dict:
    return {"type": REFRESHED, "data": {"exp": expires_at}}


def encode(message: dict) -> bytes:
    """Serialise a message to UTF-8 JSON bytes."""
    return orjson.dumps(message)


def frame(message: dict) -> bytes:
    """A message as one WebSocket text frame, ready to write to any client."""
    return text_frame(orjson.dumps(message))


# -- events relayed from Redis ------------------------------------------------

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
    for every client, whatever its scope or subscription.
    """

    type: str
    data: dict
    id: Optional[str] = None
    owner: Optional[str] = None
    _frame: Optional[bytes] = dataclasses.field(default=None, repr=False, compare=False)
    key: Optional[Tuple[int, int]] = dataclasses.field(default=None, repr=False, compare=False)

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
            self._frame = frame(message)
        return self._frame


def parse_event(payload: bytes, stream_id: Optional[str] = None) -> Event:
    """Parse one event as workers write it (docs/protocol.md, section 6).

    `payload` is the JSON of ``{"type", "data"}`` (history entries) or
    ``{"id", "type", "data"}`` (channel messages), either with an optional
    ``"owner"`` (a string; a whole number is taken as its decimal string).
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
    return Event(type=kind, data=data, id=event_id, owner=owner, key=key)


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


# -- the shared queue snapshot -------------------------------------------------

def decode_snapshot(payload: bytes) -> dict:
    """The leader's poll result as `server` writes it to Redis:
    ``{"data": queue data or null, "stale_reason": str or null, "broker": bool,
    "leader": str}``. Raises ValueError when it is not that."""
    try:
        shared = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if (not isinstance(shared, dict)
            or not isinstance(shared.get("data"), (dict, type(None)))
            or not isinstance(shared.get("stale_reason"), (str, type(None)))
            or not isinstance(shared.get("broker"), bool)):
        raise ValueError("not a queue snapshot")
    data = shared["data"]
    if data is not None and not all(isinstance(data.get(key), list) for key in
                                    ("active_tasks", "scheduled_tasks", "reserved_tasks",
                                     "workers")):
        raise ValueError("queue snapshot without its lists")
    return shared


# -- frames from clients ------------------------------------------------------

class ProtocolError(ValueError):
    """A client frame the server cannot act on; becomes an `error` reply."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message

    def reply(self) -> dict:
        return error(self.code, self.message)


@dataclasses.dataclass(frozen=True)
class Action:
    name: str
    task_ids: Optional[frozenset] = None
    avids: Optional[frozenset] = None
    last_event_id: Optional[str] = None
    token: Optional[str] = None


ACTIONS = ("get_queue_status", "ping", "subscribe", "resume", "refresh")


def parse_action(frame: Any, max_subscribe: int = 1000) -> Action:
    """Parse one client frame into an `Action`; raises `ProtocolError`.
    A `subscribe` may name at most `max_subscribe` task ids and subjects."""
    if isinstance(frame, bytes):
        raise ProtocolError(BINARY_NOT_SUPPORTED, "binary frames are not supported; send JSON text")
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError:
        raise ProtocolError(INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(message, dict):
        raise ProtocolError(NOT_AN_OBJECT, "frame must be a JSON object")
    name = message.get("action")
    if name is None:
        raise ProtocolError(MISSING_ACTION, "frame has no 'action'")
    if not isinstance(name, str) or name not in ACTIONS:
        raise ProtocolError(UNKNOWN_ACTION,
                            f"unknown action {str(name)[:64]!r}; expected one of {', '.join(ACTIONS)}")
    if name == "subscribe":
        return _parse_subscribe(message, max_subscribe)
    if name == "resume":
        return Action(name, last_event_id=_parse_event_id(message.get("last_event_id")))
    if name == "refresh":
        token = message.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(INVALID_ARGUMENT, "refresh needs 'token', a JWT string")
        return Action(name, token=token)
    return Action(name)


def _parse_subscribe(message: dict, max_subscribe: int) -> Action:
    task_ids, avids = message.get("task_ids"), message.get("avids")
    if task_ids is None and avids is None:
        raise ProtocolError(INVALID_ARGUMENT, "subscribe needs 'task_ids' or 'avids'")
    count = sum(len(v) for v in (task_ids, avids) if isinstance(v, list))
    if count > max_subscribe:
        raise ProtocolError(INVALID_ARGUMENT, f"subscribe names {count} task ids and subjects; "
                                              f"at most {max_subscribe} are allowed")
    return Action("subscribe", task_ids=_scalar_set("task_ids", task_ids),
                  avids=_scalar_set("avids", avids))


def _scalar_set(key: str, value: Any) -> Optional[frozenset]:
    if value is None:
        return None
    if not isinstance(value, list) or not all(
            isinstance(item, (str, int)) and not isinstance(item, bool) for item in value):
        raise ProtocolError(INVALID_ARGUMENT, f"'{key}' must be a list of strings or numbers")
    return frozenset(value)


def parse_resume_argument(value: str) -> Action:
    """The `resume` action asked for by a `?last_event_id=ID` query argument."""
    return Action("resume", last_event_id=_parse_event_id(value))


def _parse_event_id(value: Any) -> str:
    if parse_stream_id(value) is None:
        raise ProtocolError(INVALID_ARGUMENT,
                            "'last_event_id' must be a stream id such as \"1703001234567-0\"")
    return value
