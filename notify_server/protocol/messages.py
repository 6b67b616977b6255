"""The client protocol as plain data: the replies the server sends and the
actions a client may ask for.

Nothing here does I/O. Server-to-client messages are dicts
``{"type": T, "data": {...}}``, encoded once with orjson. Client-to-server
frames are parsed into an `Action` or rejected with a `ProtocolError` that
carries a stable error code. Events are `stream.Event`s; close codes are
in `close_codes`.
"""

import dataclasses
from typing import Any, Optional

import orjson

from notify_server.protocol.framing import text_frame
from notify_server.protocol.stream import parse_stream_id

QUEUE_STATUS = "queue_status"
PONG = "pong"
ERROR = "error"
RESYNC = "resync"
REFRESHED = "refreshed"
TASK = "task"
# Every type of message the server builds itself (events are `task_events`'):
# the complete list, which the JS client's declarations are checked against.
TYPES = (QUEUE_STATUS, PONG, ERROR, RESYNC, REFRESHED, TASK)

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
NOT_FOUND = "not_found"
UNAVAILABLE = "unavailable"
ERROR_CODES = (INVALID_JSON, NOT_AN_OBJECT, BINARY_NOT_SUPPORTED, MISSING_ACTION, UNKNOWN_ACTION,
               INVALID_ARGUMENT, RESUME_IN_PROGRESS, RATE_LIMITED, INVALID_TOKEN, AUTH_DISABLED,
               NOT_FOUND, UNAVAILABLE)

MAX_TASK_ID = 255


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


def task(record: dict) -> dict:
    return {"type": TASK, "data": record}


def frame(message: dict) -> bytes:
    """A message as one WebSocket text frame, ready to write to any client."""
    return text_frame(orjson.dumps(message))


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
    task_id: Optional[str] = None


ACTIONS = ("get_queue_status", "ping", "subscribe", "resume", "refresh", "get_task")


def valid_task_id(value: Any) -> bool:
    """A task id the server looks up: a string of 1 to 255 characters
    without control characters."""
    return (isinstance(value, str) and 0 < len(value) <= MAX_TASK_ID
            and not any(ord(c) < 32 or ord(c) == 127 for c in value))


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
    if name == "get_task":
        task_id = message.get("task_id")
        if not valid_task_id(task_id):
            raise ProtocolError(INVALID_ARGUMENT, "get_task needs 'task_id', a string of 1 to "
                                                  f"{MAX_TASK_ID} characters")
        return Action(name, task_id=task_id)
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
