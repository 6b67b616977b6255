"""The set of open client sessions and the fan-out to them.

Pure, and called on the event-loop thread only. A broadcast frames each event
once (`Event.frame`); every session that takes everything gets the same
bytes, the whole batch in one `send`. A broadcast never waits for a client:
`send` only hands bytes to the session's connection.
"""

import logging
from typing import Iterable, Optional, Sequence, Set, Tuple

from .messages import CLOSE_INTERNAL_ERROR, Event
from .session import Session

log = logging.getLogger(__name__)


class Hub:
    """Every fan-out isolates sessions from each other: a session whose
    `send` (or filter) raises is logged as a bug, taken out of the hub and
    closed with `CLOSE_INTERNAL_ERROR` (1011, so its client reconnects and
    resumes), and every other session still gets the whole batch."""

    def __init__(self) -> None:
        self._sessions: Set[Session] = set()
        # The fast path: the `send` of every session that takes everything
        # (a tuple of callables: one object less to touch per delivery), those
        # sessions, and the others. Rebuilt lazily after a session joins,
        # leaves or changes mode.
        self._split: Optional[Tuple[tuple, Tuple[Session, ...], Tuple[Session, ...]]] = None

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
            plain = tuple(s for s in self._sessions if s.takes_everything)
            self._split = (tuple(s.send for s in plain), plain,
                           tuple(s for s in self._sessions if not s.takes_everything))
        sends, plain, others = self._split
        failed = []
        if sends:
            shared = events[0].frame if len(events) == 1 else b"".join(e.frame for e in events)
            broken = {}
            for send in sends:
                try:
                    send(shared)
                except Exception as exc:
                    broken[id(send)] = exc
            # Every session of a send that raised (sessions do not share one in
            # practice; if they did, that send is broken for all of them).
            failed = [(session, broken[id(session.send)]) for session in plain
                      if id(session.send) in broken]
        shared_writes = len(plain) - len(failed)
        for session in others:
            try:
                session.deliver(events)
            except Exception as exc:
                failed.append((session, exc))
        self._drop(failed)
        return shared_writes

    def send_all(self, frame: bytes) -> int:
        """Send an already-framed message (a `resync`) to every session;
        returns how many got it."""
        return self._send_each(tuple(self._sessions), frame)

    def send_live(self, frame: bytes) -> int:
        """Send an already-framed `queue_status` to every session that is not
        replaying (a replay ends with its own, current one); returns how many."""
        return self._send_each(tuple(s for s in self._sessions if not s.holding), frame)

    def _send_each(self, sessions: Iterable[Session], frame: bytes) -> int:
        failed, sent = [], 0
        for session in sessions:
            try:
                session.send(frame)
                sent += 1
            except Exception as exc:
                failed.append((session, exc))
        self._drop(failed)
        return sent

    def _drop(self, failed: Sequence[Tuple[Session, Exception]]) -> None:
        for session, exc in failed:
            log.error("delivery to a client failed; closing it with %d", CLOSE_INTERNAL_ERROR,
                      exc_info=exc)
            self.discard(session)
            try:
                session.close(CLOSE_INTERNAL_ERROR, "internal error; reconnect and resume")
            except Exception:
                log.exception("closing the failed client failed too")
