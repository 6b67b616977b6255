"""The event bridge helper's rules: what a new leader writes again, and when
the helper probes, looks for silent workers, reports its table and enables
events.

Pure: no Celery, kombu, Redis or Tornado import, and no clock. Every call
is told `now`: seconds on the helper's wall clock, the clock the worker
table (`bridge_mapping`) keeps too. The helper (`bridge_helper`) asks these
objects what to do and does it.
"""

import collections
from typing import Deque, Generic, Iterable, List, Optional, Tuple, TypeVar

# Seconds between two `enable_events` broadcasts (Flower's interval).
ENABLE_EVENTS_INTERVAL = 5.0
# At most this often the worker table goes to the server when only heartbeats moved.
TABLE_INTERVAL = 1.0
# Seconds between two probe events while none came back.
PROBE_INTERVAL = 0.5
# Seconds between two looks for workers whose heartbeats stopped: not on
# every event, the table may hold many workers.
EXPIRY_CHECK_INTERVAL = 0.5
# At most this many recent events are kept for a takeover (about 50 s at 2,000 a second).
MAX_RECENT = 100_000

T = TypeVar("T")


def replay_window(leader_ttl: float) -> float:
    """How far back a process that takes the lease writes again what it read.

    The lease runs out at most `leader_ttl` after the old leader's last
    renewal, and a follower takes it within a third of one more: twice the
    lease covers what the old leader read but may not have written, with
    room to spare, and 2 s more the events still in flight.
    """
    return 2 * leader_ttl + 2.0


class Takeover(Generic[T]):
    """Which of the events read are written, as this process gains and loses the lease.

    Everything read in the last `window` seconds is remembered (the latest
    `capacity` at most). While this process does not lead, nothing is
    written. When it takes the lease, everything remembered is written
    again, once (what the old leader already wrote is refused by its
    transition key; what it never wrote, because it died, is written now);
    from then on each event once, as it is read.
    """

    def __init__(self, window: float, capacity: int = MAX_RECENT):
        self._window = window
        self._recent: Deque[Tuple[float, T]] = collections.deque(maxlen=capacity)
        self._leading = False

    def lead(self, leading: bool, now: float) -> Optional[List[T]]:
        """Say whether this process leads at `now`. On a takeover (leading,
        and not at the last call) returns what to write again: everything
        read within `window` of `now`, oldest first; else None."""
        self._forget_before(now - self._window)
        took_over = leading and not self._leading
        self._leading = leading
        return [item for _, item in self._recent] if took_over else None

    def read(self, items: Iterable[T], now: float) -> List[T]:
        """Remember `items`, read at `now`; returns those to write now: all of
        them while this process leads (as `lead` last said), else none."""
        items = list(items)
        self._recent.extend((now, item) for item in items)
        self._forget_before(now - self._window)
        return items if self._leading else []

    def _forget_before(self, horizon: float) -> None:
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()


class Every:
    """When an action repeated every `interval` seconds is due: at once at
    first and after `reset`, then at most once per `interval`."""

    def __init__(self, interval: float):
        self._interval = interval
        self._next = float("-inf")

    def due(self, now: float) -> bool:
        """True when the action is due at `now`; it then counts as done."""
        if now < self._next:
            return False
        self._next = now + self._interval
        return True

    def reset(self) -> None:
        """Make the action due at once."""
        self._next = float("-inf")


class Probe:
    """The helper's own event, sent until its subscription receives it: only
    then is the bridge ready (kombu may subscribe after the consumer says it is)."""

    def __init__(self, interval: float = PROBE_INTERVAL):
        self._awaited: Optional[str] = None
        self._resend = Every(interval)

    def connected(self, probe_id: str) -> None:
        """(Re)connected to the broker: send the probe `probe_id` at once,
        then every `interval` until it comes back."""
        self._awaited = probe_id
        self._resend.reset()

    def due(self, now: float) -> Optional[str]:
        """The id of the probe to send at `now`, or None."""
        return self._awaited if self._awaited is not None and self._resend.due(now) else None

    def came_back(self, probe_id: Optional[str]) -> bool:
        """A probe event arrived: True, once per connection, when it is the
        awaited one (the subscription receives events)."""
        if probe_id is None or probe_id != self._awaited:
            return False
        self._awaited = None
        return True


class TableReports:
    """When the worker table goes to the server: at once when a worker came
    or went; when only heartbeats moved, at most once per `interval`. The
    first `due` sends it (the server learns the counters from the start)."""

    def __init__(self, interval: float = TABLE_INTERVAL):
        self._interval = interval
        self._sent_at = float("-inf")
        self._unsent = True

    def changed(self, now: float, came_or_went: bool) -> bool:
        """The table changed at `now`: True when it goes to the server now,
        i.e. when a worker came or went (else `due` says when)."""
        self._unsent = True
        if came_or_went:
            self._sent(now)
        return came_or_went

    def due(self, now: float) -> bool:
        """True when a change not sent yet goes at `now`."""
        if not self._unsent or now - self._sent_at < self._interval:
            return False
        self._sent(now)
        return True

    def _sent(self, now: float) -> None:
        self._sent_at, self._unsent = now, False
