"""What one webhook is sent next, in stream order, within its budget (pure).

The sender hands over every history event it reads (`read`), matched or not,
asks for the next post (`next_post`), posts it until it is delivered, and
reports that (`done`). Above the budget, matching events are gathered into
one `Summary`, posted as soon as the budget allows again. `kept` is the
stream id up to which everything read has been handled: the position the
sender keeps in Redis, from which a restart or a new leader reads again.
"""

import collections
import dataclasses
from typing import Deque, Dict, Optional, Union

from notify_server.alerts.budget import Budget
from notify_server.alerts.rules import task_name
from notify_server.protocol.stream import Event

UNNAMED = "(unnamed)"


@dataclasses.dataclass
class Summary:
    """Matching events gathered while the budget was spent: how many, of
    which task names, from which stream id and time to which."""

    count: int
    names: Dict[str, int]
    first_id: str
    last_id: str

    @classmethod
    def of(cls, event: Event) -> "Summary":
        return cls(1, {task_name(event) or UNNAMED: 1}, event.id, event.id)

    def add(self, event: Event) -> None:
        self.count += 1
        name = task_name(event) or UNNAMED
        self.names[name] = self.names.get(name, 0) + 1
        self.last_id = event.id


@dataclasses.dataclass(frozen=True)
class Gap:
    """Events after stream id `after_id` and before `before_id` (the first one
    the history still holds) were trimmed before they were read."""

    after_id: str
    before_id: str


@dataclasses.dataclass(frozen=True)
class Post:
    """One post: an event, a summary or a gap. `alert_id` is what the
    receiver de-duplicates on (the `X-Notify-Alert-Id` header, the body's
    `id`): the same whoever sends it, and however often."""

    content: Union[Event, Summary, Gap]

    @property
    def alert_id(self) -> str:
        content = self.content
        if isinstance(content, Event):
            return content.id
        if isinstance(content, Summary):
            return f"{content.first_id}..{content.last_id}"
        return f"gap:{content.after_id}..{content.before_id}"


class Outbox:
    """The alerts of one webhook not yet delivered. Each call returns at once."""

    def __init__(self, position: str, per_minute: int, now: float):
        self._budget = Budget(per_minute, now)
        self._waiting: Deque[Union[Event, Gap]] = collections.deque()
        self._gathered: Optional[Summary] = None
        self._head: Optional[Post] = None
        self._read = self._kept = position
        self.summarised = 0  # events gathered into summaries so far

    @property
    def cursor(self) -> str:
        """The last stream id read: the next read starts after it."""
        return self._read

    @property
    def kept(self) -> str:
        """The stream id up to which every event read is alerted or not to be."""
        if self._head is None and not self._waiting and self._gathered is None:
            self._kept = self._read
        return self._kept

    def history_starts_at(self, first_id: str) -> bool:
        """The history's first entry is `first_id` now, before the next read.
        When it lies beyond the cursor (and not right after it), entries were
        trimmed before they were read: a gap post is queued, ahead of
        anything read later, the cursor moves to just before `first_id`, and
        True is returned. A cursor of "0-0" (the history was empty when the
        position was first kept) is never a gap: nothing was there to lose."""
        cursor = self._read
        if cursor == "0-0" or _key(first_id) <= _key(cursor) or before(first_id) == cursor:
            return False
        self._waiting.append(Gap(cursor, first_id))
        self._read = before(first_id)
        return True

    def read(self, event_id: str, alert: Optional[Event]) -> None:
        """The history entry `event_id` was read; `alert` is its event when
        it is to be alerted, else None (unmatched, or not an event)."""
        self._read = event_id
        if alert is not None:
            self._waiting.append(alert)

    def next_post(self, now: float) -> Optional[Post]:
        """The post to deliver now (the same one until `done`), or None: nothing
        waits, or the budget is spent (then what waits is gathered)."""
        if self._head is not None:
            return self._head
        if self._waiting and isinstance(self._waiting[0], Gap):
            self._head = Post(self._waiting.popleft())  # never held back: it says we missed some
            return self._head
        if self._gathered is not None or not self._budget.available(now):
            self._gather()
            if self._gathered is None or not self._budget.available(now):
                return None
            self._head, self._gathered = Post(self._gathered), None
            return self._head
        if self._waiting:
            self._head = Post(self._waiting.popleft())
        return self._head

    def done(self, now: float) -> None:
        """The post `next_post` gave was delivered (or given up): the next may go."""
        post, self._head = self._head, None
        self._budget.spend(now)
        content = post.content
        if isinstance(content, Event):
            self._kept = content.id
        elif isinstance(content, Summary):
            self._kept = content.last_id
        elif self._gathered is None:
            self._kept = before(content.before_id)
        # else: a summary of earlier events still waits; the position stays before them

    def wake_in(self, now: float) -> Optional[float]:
        """Seconds until a gathered summary may go out, or None when none waits."""
        if self._gathered is None and not self._waiting:
            return None
        return self._budget.wait(now)

    def _gather(self) -> None:
        # Only events: a gap is posted first, on its own.
        while self._waiting and isinstance(self._waiting[0], Event):
            event = self._waiting.popleft()
            self.summarised += 1
            if self._gathered is None:
                self._gathered = Summary.of(event)
            else:
                self._gathered.add(event)


MAX_SEQUENCE = 2 ** 64 - 1


def _key(stream_id: str) -> tuple:
    millis, _, sequence = stream_id.partition("-")
    return int(millis), int(sequence)


def before(stream_id: str) -> str:
    """The greatest stream id below `stream_id` ("0-0" has none: itself)."""
    millis, _, sequence = stream_id.partition("-")
    if int(sequence) > 0:
        return f"{millis}-{int(sequence) - 1}"
    return f"{int(millis) - 1}-{MAX_SEQUENCE}" if int(millis) > 0 else "0-0"
