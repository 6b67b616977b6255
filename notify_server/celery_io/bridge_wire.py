"""Celery's events as kombu's Redis transport publishes them: the channel, the message, the events.

Pure: no Redis, kombu or Celery import. On a Redis broker, Celery's event
exchange (`event_exchange`, `celeryev`) is a kombu fanout exchange, and kombu
sends a fanout message as one Redis `PUBLISH`:

- on the channel `{prefix}{exchange}/{routing key}` (the routing key is the
  event type with dots, `task.multi`, `worker.heartbeat`), or `{prefix}{exchange}`
  when the transport option `fanout_patterns` is off. The prefix is
  `/{db}.` by default (`fanout_prefix`: True; a string of its own; False for
  none); kombu's `global_keyprefix` comes before it. A receiver subscribes to
  the pattern `event_channel_pattern` gives (kombu turns the routing key `#` into `*`);
- the message is kombu's JSON envelope: `body` is the serialized event,
  base64-encoded as `properties.body_encoding` says, `content-type` its
  serializer (Celery's `event_serializer`, JSON by default);
- the body is one event (a dict with `type`), or a list of them: a worker
  with an event loop buffers its task events and sends them as `task.multi`
  (`celery.worker.consumer.events`, `buffer_group=['task']`).

`events_of` reads one message into its events, as Celery's `EventReceiver`
would hand them over (`event_from_message`: the worker's `timestamp` moved by
the difference between its `utcoffset` and ours). A message it cannot read
raises `MalformedMessage`; `reason` is one of a few fixed texts, so that the
caller can log once per reason.
"""

import base64
import binascii
from typing import Any, List

import orjson

JSON = "application/json"


class MalformedMessage(ValueError):
    """A message on the event channel that is not a Celery event kombu sent as JSON."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def event_channel_pattern(fanout_prefix: str, exchange: str, fanout_patterns: bool) -> str:
    """The channel pattern kombu's Redis transport subscribes an event receiver
    to (routing key `#`); `fanout_prefix` is the prefix with the database
    number in it (`/0.`), as the transport's channel holds it."""
    return f"{fanout_prefix}{exchange}/*" if fanout_patterns else f"{fanout_prefix}{exchange}"


def events_of(data: bytes, here_utcoffset: float) -> List[dict]:
    """The events of one message published on the event channel, oldest
    first; `here_utcoffset` is this host's offset to UTC in hours, in
    Celery's sign (`celery.utils.time.utcoffset`). Raises `MalformedMessage`."""
    envelope = _json(data, "not JSON")
    if not isinstance(envelope, dict):
        raise MalformedMessage("not a kombu message")
    if envelope.get("content-type") != JSON:
        raise MalformedMessage("not serialized as JSON (set event_serializer to json)")
    headers = envelope.get("headers")
    if isinstance(headers, dict) and headers.get("compression"):
        raise MalformedMessage("compressed")
    body = envelope.get("body")
    properties = envelope.get("properties")
    encoding = properties.get("body_encoding") if isinstance(properties, dict) else None
    if encoding == "base64":
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise MalformedMessage("a body that is not base64") from None
    elif encoding is not None or not isinstance(body, str):
        raise MalformedMessage("an unknown body encoding")
    payload = _json(body, "a body that is not JSON")
    found = payload if isinstance(payload, list) else [payload]
    for event in found:
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            raise MalformedMessage("an event without a type")
        _localize(event, here_utcoffset)
    return found


def _json(data: Any, reason: str) -> Any:
    try:
        return orjson.loads(data)
    except (orjson.JSONDecodeError, TypeError):
        raise MalformedMessage(reason) from None


def _localize(event: dict, here: float) -> None:
    # Celery's `adjust_timestamp`: the worker's clock read in its zone, moved to ours.
    offset, timestamp = event.get("utcoffset"), event.get("timestamp")
    if _is_number(offset) and _is_number(timestamp) and offset != here:
        event["timestamp"] = timestamp - (offset - here) * 3600


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
