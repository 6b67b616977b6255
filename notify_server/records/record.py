"""A task record as clients see it, made from the hash the emit script keeps.

Pure. The hash's fields are docs/protocol.md 6.5; what a client gets is the
`task` message of section 2.2 and the REST record of section 5: every field
of `FIELDS`, the owner never among them.
"""

from typing import Any, Dict, List, Mapping, Optional, Union

import orjson

from notify_server.protocol.emit_script import SORT_PREFIX_LENGTH

# The keys of a record, in the order clients get them.
FIELDS = ("task_id", "avid", "name", "status", "worker", "received_at", "started_at",
          "finished_at", "runtime", "message", "progress", "retries", "events",
          "events_dropped", "last_id")

Raw = Mapping[Union[bytes, str], Union[bytes, str]]


def text_fields(raw: Raw) -> Dict[str, str]:
    """A hash as Redis returns it (bytes or str) as str to str."""
    return {_text(key): _text(value) for key, value in raw.items()}


def owner_of(fields: Mapping[str, str]) -> Optional[str]:
    """Whose task it is (None: no owner); never shown."""
    return fields.get("owner")


def render(fields: Mapping[str, str], events: str = "") -> Optional[dict]:
    """The record of a hash's `text_fields` and its timeline's text (the
    string beside the hash); None for a hash that is not a record (empty,
    or without its sort key)."""
    sort = fields.get("sort")
    if not sort or len(sort) <= SORT_PREFIX_LENGTH:
        return None
    return {
        "task_id": sort[SORT_PREFIX_LENGTH:],
        "avid": _json(fields.get("avid")),
        "name": fields.get("name"),
        "status": fields.get("status"),
        "worker": fields.get("worker"),
        "received_at": _number(fields.get("received_at")),
        "started_at": _number(fields.get("started_at")),
        "finished_at": _number(fields.get("finished_at")),
        "runtime": _number(fields.get("runtime")),
        "message": fields.get("message"),
        "progress": _json(fields.get("progress")),
        "retries": int(_number(fields.get("attempt")) or 0),
        "events": timeline(events),
        "events_dropped": int(_number(fields.get("tl_dropped")) or 0),
        "last_id": fields.get("last_id"),
    }


def timeline(text: str) -> List[dict]:
    """The hash's timeline ("type time id" lines) as [{type, time, id}]."""
    entries = []
    for line in text.splitlines():
        parts = line.split(" ")
        if len(parts) == 3:
            entries.append({"type": parts[0], "time": _number(parts[1]), "id": parts[2]})
    return entries


def _text(value: Union[bytes, str]) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _number(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _json(value: Optional[str]) -> Any:
    if value is None:
        return None
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
