"""The set of open client sessions and the fan-out to them.

Pure, and called on the event-loop thread only. A broadcast frames each event
once (`Event.frame`); every session that takes everything gets the same
bytes, the whole batch in one `send`. A broadcast never waits for a client:
`send` only hands bytes to the session's writer.
"""

from typing import Callable, Optional, Sequence, Set, Tuple

from .messages import Event
from .session import Session


class Hub:
    def __init__(self) -> None:
        self._sessions: Set[Session] = set()
        # The fast path: the `send` of every session that takes everything, and
        # the others. Rebuilt lazily after a session joins, leaves or changes mode.
        self._split: Optional[Tuple[Tuple[Callable[[bytes], None], ...],
                                    Tuple[Session, ...]]] = None

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

    def publish(self, events: Sequence[Event]) -> int:
        """Offer a batch of task events, in order, to every session.

        Returns how many sessions got the whole batch as one shared write
        (the others filter, replay or hold, and account for themselves)."""
        if not events:
            return 0
        if self._split is None:
            self._split = (tuple(s.send for s in self._sessions if s.takes_everything),
                           tuple(s for s in self._sessions if not s.takes_everything))
        plain, others = self._split
        if plain:
            shared = events[0].frame if len(events) == 1 else b"".join(e.frame for e in events)
            for send in plain:
                send(shared)
        for session in others:
            session.deliver(events)
        return len(plain)

    def send_all(self, frame: bytes) -> int:
        """Send an already-framed message (a `queue_status`, a `resync`) to every
        session; returns how many."""
        sessions = tuple(self._sessions)
        for session in sessions:
            session.send(frame)
        return len(sessions)

    def close_all(self, code: int, reason: str) -> None:
        for session in tuple(self._sessions):
            session.close(code, reason)
