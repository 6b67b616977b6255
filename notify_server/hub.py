"""The set of open client sessions and the fan-out to them.

Pure, and called on the event-loop thread only. A broadcast frames each event
once (`Event.frame`); every session that takes everything gets the same
bytes, the whole batch in one `send`. A broadcast never waits for a client:
`send` only hands bytes to the session's writer.
"""

from typing import Iterator, Sequence, Set

from .messages import Event
from .session import Session


class Hub:
    def __init__(self) -> None:
        self._sessions: Set[Session] = set()

    def add(self, session: Session) -> None:
        self._sessions.add(session)

    def discard(self, session: Session) -> None:
        self._sessions.discard(session)

    def __len__(self) -> int:
        return len(self._sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(tuple(self._sessions))

    def publish(self, events: Sequence[Event]) -> int:
        """Offer a batch of task events, in order, to every session.

        Returns how many sessions got the whole batch as one shared write
        (the others filter, replay or hold, and account for themselves)."""
        if not events:
            return 0
        shared = None
        recipients = 0
        for session in tuple(self._sessions):
            if session.takes_everything:
                if shared is None:
                    shared = b"".join(event.frame for event in events)
                session.send(shared)
                recipients += 1
            else:
                session.deliver(events)
        return recipients

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
