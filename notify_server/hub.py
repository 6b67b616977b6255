"""The set of open client sessions and the fan-out to them.

Pure, and called on the event-loop thread only. A broadcast frames each event
once (`Event.frame`); every session that takes everything gets the same
bytes, the whole batch in one `send`. A broadcast never waits for a client:
`send` only hands bytes to the session's writer.

Large broadcasts are sent in slices of `slice_size` sessions, the next slice
deferred with `defer(callback)` (the event loop's `call_soon`), so no single
callback holds the loop for long. Slices and later broadcasts run strictly in
order, so every session still sees messages in the order they were published.
"""

import collections
from typing import Callable, Deque, Iterator, Optional, Sequence, Set, Tuple

from .messages import Event
from .session import Session

Send = Callable[[bytes], None]


class Hub:
    def __init__(self, defer: Optional[Callable[[Callable[[], None]], None]] = None,
                 slice_size: int = 500) -> None:
        self._sessions: Set[Session] = set()
        # The fast path: the `send` of every session that takes everything, and
        # the others. Rebuilt lazily after a session joins, leaves or changes mode.
        self._split: Optional[Tuple[Tuple[Send, ...], Tuple[Session, ...]]] = None
        self._defer, self._slice = defer, slice_size
        # Broadcasts not yet handed to every session: (sends, next index, bytes).
        self._pending: Deque[list] = collections.deque()

    def add(self, session: Session) -> None:
        self._sessions.add(session)
        session.on_mode_change = self._invalidate
        self._split = None

    def discard(self, session: Session) -> None:
        self._sessions.discard(session)
        self._split = None

    def _invalidate(self) -> None:
        self._split = None

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(tuple(self._sessions))

    def publish(self, events: Sequence[Event]) -> int:
        """Offer a batch of task events, in order, to every session.

        Returns how many sessions get the whole batch as one shared write
        (the others filter, replay or hold, and account for themselves)."""
        if not events:
            return 0
        if self._split is None:
            self._split = (tuple(s.send for s in self._sessions if s.takes_everything),
                           tuple(s for s in self._sessions if not s.takes_everything))
        plain, others = self._split
        if plain:
            shared = events[0].frame if len(events) == 1 else b"".join(e.frame for e in events)
            self._enqueue(plain, shared)
        for session in others:
            session.deliver(events)
        return len(plain)

    def send_all(self, frame: bytes) -> int:
        """Send an already-framed message (a `queue_status`, a `resync`) to every
        session, after any broadcast still in progress; returns how many."""
        sends = tuple(session.send for session in self._sessions)
        self._enqueue(sends, frame)
        return len(sends)

    def close_all(self, code: int, reason: str) -> None:
        self._drain_all()
        for session in tuple(self._sessions):
            session.close(code, reason)

    def _enqueue(self, sends: Tuple[Send, ...], data: bytes) -> None:
        self._pending.append([sends, 0, data])
        if len(self._pending) == 1:
            self._send_slice()

    def _send_slice(self) -> None:
        """Send the oldest pending broadcast to its next slice of sessions."""
        while self._pending:
            item = self._pending[0]
            sends, start, data = item
            end = len(sends) if self._defer is None else min(len(sends), start + self._slice)
            for send in sends[start:end]:
                send(data)
            if end < len(sends):
                item[1] = end
                self._defer(self._send_slice)
                return
            self._pending.popleft()

    def _drain_all(self) -> None:
        self._defer = None
        self._send_slice()
