"""What a task list asks for, checked; where its page starts; the cursor.

Pure. `parse_query` turns `GET /api/tasks`'s query arguments into a
`TaskQuery` or raises `QueryError` naming the bad parameter (a 400). Lists
are newest first by sort key, ``"<13-digit ms>-<6-digit seq> <task_id>"``:
the stream id of the task's first event, which never changes, so a cursor
(the last sort key a page reached, base64url) neither repeats nor skips a
record while others are written.
"""

import base64
import binascii
import dataclasses
import math
import re
from typing import Mapping, Optional, Sequence, Union

from notify_server.protocol.emit_script import STATUSES
from notify_server.protocol.messages import valid_task_id

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_FILTER = 200
# Index entries one page may look at before it answers (with a cursor to go on).
SCAN_BUDGET = 2000
PARAMETERS = ("status", "name", "worker", "q", "since", "until", "limit", "cursor", "token")
_SORT_KEY = re.compile(r"\d{13}-\d{6} .+", re.DOTALL)
# Unix seconds a query may name: up to the year 2286, where 13-digit ms end.
_MAX_TIME = 9999999999.0


class QueryError(ValueError):
    """A query argument that cannot be used; `parameter` names it."""

    def __init__(self, parameter: str, reason: str):
        super().__init__(f"{parameter}: {reason}")
        self.parameter = parameter


@dataclasses.dataclass(frozen=True)
class TaskQuery:
    status: Optional[str] = None
    name: Optional[str] = None
    worker: Optional[str] = None
    q: Optional[str] = None
    since: Optional[float] = None   # Unix seconds, first written at or after
    until: Optional[float] = None   # Unix seconds, first written at or before
    limit: int = DEFAULT_LIMIT
    cursor: Optional[str] = None    # the sort key the previous page ended at

    @property
    def upper(self) -> str:
        """The BYLEX bound a page starts below (newest first)."""
        bounds = []
        if self.cursor is not None:
            bounds.append(self.cursor)
        if self.until is not None:
            bounds.append(_ms_text(self.until * 1000 + 1))
        return "(" + min(bounds) if bounds else "+"

    @property
    def lower(self) -> str:
        """The BYLEX bound a page ends at."""
        return "-" if self.since is None else "[" + _ms_text(math.ceil(self.since * 1000))


def parse_query(arguments: Mapping[str, Sequence[Union[bytes, str]]]) -> TaskQuery:
    """A `TaskQuery` from query arguments (name -> values, as Tornado keeps
    them); raises `QueryError` for an unknown or repeated parameter or a bad value."""
    values = {}
    for name, given in arguments.items():
        if name not in PARAMETERS:
            raise QueryError(name, f"unknown parameter; known: {', '.join(PARAMETERS)}")
        if len(given) != 1:
            raise QueryError(name, "given more than once")
        value = given[0]
        try:
            values[name] = value.decode("utf-8") if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            raise QueryError(name, "not UTF-8") from None
    status = values.get("status")
    if status is not None and status not in STATUSES:
        raise QueryError("status", f"one of {', '.join(STATUSES)}")
    for name in ("name", "worker", "q"):
        text = values.get(name)
        if text is not None and not 0 < len(text) <= MAX_FILTER:
            raise QueryError(name, f"1 to {MAX_FILTER} characters")
    since, until = _time(values, "since"), _time(values, "until")
    if since is not None and until is not None and since > until:
        raise QueryError("since", "after until")
    return TaskQuery(status=status, name=values.get("name"), worker=values.get("worker"),
                     q=values.get("q"), since=since, until=until, limit=_limit(values),
                     cursor=decode_cursor(values["cursor"]) if "cursor" in values else None)


def encode_cursor(sort_key: str) -> str:
    return base64.urlsafe_b64encode(sort_key.encode("utf-8")).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The sort key in a cursor `encode_cursor` made; raises `QueryError`."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (binascii.Error, ValueError):
        raise QueryError("cursor", "not a cursor this server gave") from None
    if not _SORT_KEY.fullmatch(text) or not valid_task_id(text[21:]):
        raise QueryError("cursor", "not a cursor this server gave")
    return text


def _time(values: Mapping[str, str], name: str) -> Optional[float]:
    text = values.get(name)
    if text is None:
        return None
    try:
        number = float(text)
    except ValueError:
        raise QueryError(name, "Unix seconds, a number") from None
    if not math.isfinite(number) or not 0 <= number <= _MAX_TIME:
        raise QueryError(name, f"Unix seconds from 0 to {_MAX_TIME:.0f}")
    return number


def _limit(values: Mapping[str, str]) -> int:
    text = values.get("limit")
    if text is None:
        return DEFAULT_LIMIT
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise QueryError("limit", f"a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def _ms_text(ms: float) -> str:
    return "%013d" % min(int(ms), 10 ** 13 - 1)
