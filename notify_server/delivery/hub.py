"""The set of open client sessions and the fan-out to them.

Pure, and called on the event-loop thread only. A broadcast frames each event
once (`Event.frame`); every session that takes everything gets the same
bytes, the whole batch in one `send`. A broadcast never waits for a client:
`send` only hands bytes to the session's connection.

Sessions whose scope sees everything (open mode, admin tokens) share that
fast path. Scoped sessions are indexed by owner: an event is offered only to
the sessions of its owner, so it costs work in proportion to the sockets
that receive it, however many other users are connected. A batch with a
public event (`Event.public`: a worker came or went, rare) is offered to every
scoped session, each filtering it itself.
"""

import collections
import logging
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from notify_server.access.auth import Scope
from notify_server.delivery.session import Session
from notify_server.protocol import close_codes
from notify_server.protocol.stream import Event, joined_frames

log = logging.getLogger(__name__)


class Hub:
    """Every fan-out isolates sessions from each other: a session whose
    `send` (or filter) raises is logged as a bug, taken out of the hub and
    closed with `close_codes.FAILED` (1011, so its client reconnects and
    resumes), and every other session still gets the whole batch."""

    def __init__(self, on_sent: Callable[[str, int], None] = lambda kind, count: None) -> None:
        """`on_sent(type, count)` is told how many scoped sessions got an
        event of that type in one write from the hub."""
        self._sessions: Set[Session] = set()
        # Sessions whose scope sees everything, and the others by owner.
        self._everyone: Set[Session] = set()
        self._by_owner: Dict[str, Set[Session]] = {}
        self._on_sent = on_sent
        # The fast path over `_everyone`: the `send` of every session that
        # takes everything (a tuple of callables: one object less to touch per
        # delivery), those sessions, and the others. Rebuilt lazily after a
        # session joins, leaves or changes mode.
        self._split: Optional[Tuple[tuple, Tuple[Session, ...], Tuple[Session, ...]]] = None
        # Bound once, not once per session (64 bytes each).
        self._invalidate_split = self._invalidate

    def add(self, session: Session) -> None:
        self._sessions.add(session)
        session.on_mode_change = self._invalidate_split
        if session.scope.sees_everything:
            self._everyone.add(session)
            self._split = None
        else:
            for owner in session.scope.owners:
                self._by_owner.setdefault(owner, set()).add(session)

    def discard(self, session: Session) -> None:
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        if session.scope.sees_everything:
            self._everyone.discard(session)
            self._split = None
        else:
            for owner in session.scope.owners:
                members = self._by_owner.get(owner)
                if members is not None:
                    members.discard(session)
                    if not members:
                        del self._by_owner[owner]

    def rescope(self, session: Session, scope: Scope) -> None:
        """Give `session` a new scope (a refreshed token), in the index too."""
        member = session in self._sessions
        if member:
            self.discard(session)
        session.set_scope(scope)
        if member:
            self.add(session)

    def _invalidate(self) -> None:
        self._split = None

    def __len__(self) -> int:
        return len(self._sessions)

    def publish(self, events: Sequence[Event]) -> int:
        """Offer a batch of task events, in order, to every session.

        Returns how many sessions that see everything got the whole batch as
        one shared write (scoped sessions are counted through `on_sent`; the
        sessions that filter, replay or hold account for themselves)."""
        if not events:
            return 0
        failed: List[Tuple[Session, Exception]] = []
        shared_writes = self._publish_to_everyone(events, failed) if self._everyone else 0
        if self._by_owner:
            if any(event.public for event in events):
                self._publish_to_scoped(events, failed)
            else:
                self._publish_by_owner(events, failed)
        self._drop(failed)
        return shared_writes

    def _publish_to_everyone(self, events: Sequence[Event], failed: list) -> int:
        if self._split is None:
            plain = tuple(s for s in self._everyone if s.takes_everything)
            self._split = (tuple(s.write for s in plain), plain,
                           tuple(s for s in self._everyone if not s.takes_everything))
        sends, plain, others = self._split
        if sends:
            shared = joined_frames(events)
            broken = {}
            for send in sends:
                try:
                    send(shared)
                except Exception as exc:
                    broken[id(send)] = exc
            # Every session of a send that raised (sessions do not share one in
            # practice; if they did, that send is broken for all of them).
            failed.extend((session, broken[id(session.write)]) for session in plain
                          if id(session.write) in broken)
        shared_writes = len(plain) - len(failed)
        for session in others:
            try:
                session.deliver(events)
            except Exception as exc:
                failed.append((session, exc))
        return shared_writes

    def _publish_to_scoped(self, events: Sequence[Event], failed: list) -> None:
        """A batch with a public event (rare: workers come and go): every
        scoped session filters the batch itself."""
        scoped = {session for members in self._by_owner.values() for session in members}
        for session in scoped:
            try:
                session.deliver(events)
            except Exception as exc:
                failed.append((session, exc))

    def _publish_by_owner(self, events: Sequence[Event], failed: list) -> None:
        if len(events) == 1:
            self._publish_one_by_owner(events, failed)
            return
        # Each scoped session's share of the batch, in stream order.
        shares: Dict[Session, List[Event]] = {}
        for event in events:
            if event.owner is None:
                continue
            for session in self._by_owner.get(event.owner, ()):
                share = shares.get(session)
                if share is None:
                    shares[session] = [event]
                else:
                    share.append(event)
        if not shares:
            return
        sent: "collections.Counter[str]" = collections.Counter()
        for session, share in shares.items():
            try:
                if session.takes_everything:
                    session.write(joined_frames(share))
                    sent.update(event.type for event in share)
                else:
                    session.deliver(share)
            except Exception as exc:
                failed.append((session, exc))
        for kind, count in sent.items():
            self._on_sent(kind, count)

    def _publish_one_by_owner(self, events: Sequence[Event], failed: list) -> None:
        """The common case, one event: its owner's sessions, no per-session list."""
        event = events[0]
        sessions = self._by_owner.get(event.owner) if event.owner is not None else None
        if not sessions:
            return
        frame, sent = event.frame, 0
        for session in tuple(sessions):  # a send may close a session and shrink the set
            try:
                if session.takes_everything:
                    session.write(frame)
                    sent += 1
                else:
                    session.deliver(events)
            except Exception as exc:
                failed.append((session, exc))
        if sent:
            self._on_sent(event.type, sent)

    def send_all(self, frame: bytes) -> int:
        """Send an already-framed message (a `resync`) to every session;
        returns how many got it."""
        return self._send_each(tuple(self._sessions), frame)

    def send_live(self, frame: bytes, frame_for: Callable[[Scope], Optional[bytes]]) -> int:
        """Send an already-framed `queue_status` to every session that is not
        replaying (a replay ends with its own, current one): `frame` to those
        that see everything, `frame_for(scope)` to the others (None: nothing
        for that one); returns how many got one."""
        live = [s for s in self._sessions if not s.holding]
        return self._send_each(live, lambda session: (
            frame if session.scope.sees_everything else frame_for(session.scope)))

    def _send_each(self, sessions: Iterable[Session], frame) -> int:
        """`frame`: the bytes for all, or a function of the session giving its bytes."""
        failed, sent = [], 0
        for session in sessions:
            try:
                data = frame(session) if callable(frame) else frame
                if data is None:
                    continue
                session.write(data)
                sent += 1
            except Exception as exc:
                failed.append((session, exc))
        self._drop(failed)
        return sent

    def _drop(self, failed: Sequence[Tuple[Session, Exception]]) -> None:
        for session, exc in failed:
            log.error("delivery to a client failed; closing it with %d", close_codes.INTERNAL_ERROR,
                      exc_info=exc)
            self.discard(session)
            try:
                session.close(*close_codes.FAILED)
            except Exception:
                log.exception("closing the failed client failed too")
