"""The set of open client sessions and the fan-out to them.

Pure, and called on the event-loop thread only. A broadcast encodes each event
once (`Event.frame`) and hands the same bytes to every session; it never waits
for any client.
"""

from typing import Iterator, Set

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

    def publish(self, event: Event) -> None:
        """Offer a task event to every session (filters and replays apply)."""
        for session in tuple(self._sessions):
            session.deliver(event)

    def send_all(self, frame: bytes) -> None:
        """Send an already-encoded frame (a `queue_status`) to every session."""
        for session in tuple(self._sessions):
            session.send(frame)
