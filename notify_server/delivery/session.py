"""One client's view of the event stream: its filter and its resume state.

Pure: the adapter hands in `send(frame_bytes)` (kept as `write`: the
unfiltered write; `deliver` is the filtered one) and `close(code, reason)`
callables and calls these methods on the event-loop thread only.
"""

from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from notify_server.access.auth import EVERYONE, Scope
from notify_server.protocol.messages import RESUME_IN_PROGRESS, ProtocolError
from notify_server.protocol.stream import Event, joined_frames, parse_stream_id


class Session:
    """Decides which events a client gets and in what order.

    While a resume replay is being read from the history (`hold` ..
    `release`), live events are held back; `release` then sends the held ones
    that the replay did not already cover. The replay may have read further
    than the live relay has got, so after `release` live events up to the
    replay's last id are dropped too, until a newer one arrives: the client
    sees one ordered stream without duplicates.

    Its `scope` (`auth.Scope`) bounds everything it sends: an event whose
    owner the scope does not see is never sent, whatever the filter. The hub
    offers a scoped session only its owners' live events (and public ones,
    about workers, which pass every scope and filter); replays and held
    events are checked here.

    A `subscribe` that names task ids sends their records first
    (`hold_records` .. `release_records`): live events wait meanwhile, and
    afterwards a live event of such a task at or before its record's
    `last_id` is dropped (the record already shows it), so each event
    reaches the client once, as an event or inside a record, and every
    event after the record follows it.
    """

    __slots__ = ("write", "close", "_on_sent", "scope", "_task_ids", "_avids",
                 "_held", "_replaying", "_reading", "_covered_through", "_floors",
                 "_floor_top", "takes_everything", "on_mode_change", "__weakref__")

    def __init__(self, send: Callable[[bytes], None], close: Callable[[int, str], None],
                 on_sent: Optional[Callable[[Sequence[Event]], None]] = None,
                 scope: Scope = EVERYONE):
        """`on_sent(events)` is told of events this session sent itself: those
        filtered, replayed or held (the hub counts its shared broadcasts)."""
        self.write = send
        self.close = close
        self._on_sent = on_sent
        self.scope = scope
        self._task_ids: Optional[frozenset] = None
        self._avids: Optional[frozenset] = None
        self._held: Optional[List[Event]] = None
        self._replaying = False
        self._reading = 0  # record reads in progress
        self._covered_through: Optional[Tuple[int, int]] = None
        # task id -> the stream id its record was sent at; the highest of them.
        self._floors: Optional[Dict[str, Tuple[int, int]]] = None
        self._floor_top: Tuple[int, int] = (0, 0)
        # True when every live event goes straight out (no filter, no replay,
        # nothing to skip): the hub's fast path. Kept current by `_update`.
        self.takes_everything = True
        # Called when `takes_everything` changes (the hub caches it).
        self.on_mode_change: Callable[[], None] = _nothing

    def set_scope(self, scope: Scope) -> None:
        """Replace the scope (a refreshed token). Only `Hub.rescope` calls
        this for a session in the hub, so that its index follows."""
        self.scope = scope

    def subscribe(self, task_ids: Optional[frozenset], avids: Optional[frozenset]) -> None:
        """From now on, only task events for these task ids or subjects pass."""
        self._task_ids, self._avids = task_ids, avids
        self._update()

    def _update(self) -> None:
        plain = (self._task_ids is None and self._avids is None and self._held is None
                 and self._covered_through is None and self._floors is None)
        if plain != self.takes_everything:
            self.takes_everything = plain
            self.on_mode_change()

    def wants(self, event: Event) -> bool:
        if event.public:
            return True
        if not self.scope.sees(event.owner):
            return False
        if self._task_ids is None and self._avids is None:
            return True
        data = event.data
        if self._task_ids is not None and _member(data.get("task_id"), self._task_ids):
            return True
        return self._avids is not None and _member(data.get("avid"), self._avids)

    def deliver(self, events: Sequence[Event]) -> None:
        """Live events: send the wanted ones in one write, or hold them during a replay."""
        if self._held is not None:
            self._held.extend(events)
            return
        if self._covered_through is not None:
            events = self._uncovered(events)
        if self._floors is not None:
            events = self._above_floors(events)
        self._send_wanted(events)

    def replay(self, events: Sequence[Event]) -> None:
        """Events read from the history during a resume."""
        self._send_wanted(events)

    @property
    def holding(self) -> bool:
        """True while a replay is being read (live events wait)."""
        return self._replaying

    def hold(self) -> None:
        """Hold live events back while a replay is read; raises `ProtocolError`
        (`resume_in_progress`) while another replay is still running, since
        two replays on one socket could not be kept in order."""
        if self._replaying:
            raise ProtocolError(RESUME_IN_PROGRESS, "a resume is already in progress; send the "
                                "next one after its queue_status or resync arrived")
        self._replaying = True
        self._start_holding()

    def release(self, replayed_up_to: Optional[str]) -> None:
        """End a replay: send the held live events newer than the replay's last id."""
        self._replaying = False
        if replayed_up_to is not None:
            self._covered_through = parse_stream_id(replayed_up_to)
        self._release_held()

    def hold_records(self) -> None:
        """Hold live events back while records are read."""
        self._reading += 1
        self._start_holding()

    def release_records(self, frames: bytes, floors: Mapping[str, str]) -> None:
        """Send the records read (`frames`, already framed; b"" for none),
        then the held live events; from now on drop the live events of each
        task in `floors` (task id -> its record's `last_id`) up to that id."""
        if frames:
            self.write(frames)
        for task_id, last_id in floors.items():
            key = parse_stream_id(last_id)
            if key is None:
                continue
            if self._floors is None:
                self._floors = {}
            self._floors[task_id] = max(key, self._floors.get(task_id, key))
            self._floor_top = max(self._floor_top, key)
        self._reading -= 1
        self._release_held()

    def _start_holding(self) -> None:
        if self._held is None:
            self._held = []
        self._update()

    def _release_held(self) -> None:
        if self._replaying or self._reading:
            self._update()
            return
        held, self._held = self._held or [], None
        if self._covered_through is not None:
            held = self._uncovered(held)
        if self._floors is not None:
            held = self._above_floors(held)
        self._update()
        self._send_wanted(held)

    def _above_floors(self, events: Sequence[Event]) -> List[Event]:
        """Drop live events a record sent already showed; forget the floors
        once the stream is past all of them (events arrive in id order)."""
        floors, kept = self._floors, []
        for event in events:
            key = event.key
            if key is not None and floors is not None:
                task_id = event.data.get("task_id")
                floor = floors.get(task_id) if isinstance(task_id, str) else None
                if floor is not None and key <= floor:
                    continue
                if key > self._floor_top:
                    floors = self._floors = None
                    self._update()
            kept.append(event)
        return kept

    def _uncovered(self, events: Sequence[Event]) -> List[Event]:
        """Drop events the replay already sent; stop checking once past it."""
        through = self._covered_through
        kept = []
        for event in events:
            key = event.key
            if key is not None and key <= through:
                continue
            if key is not None:
                self._covered_through = None
                self._update()
            kept.append(event)
        return kept

    def _send_wanted(self, events: Sequence[Event]) -> None:
        wanted = [event for event in events if self.wants(event)]
        if not wanted:
            return
        self.write(joined_frames(wanted))
        if self._on_sent is not None:
            self._on_sent(wanted)


def _nothing() -> None:
    pass


def _member(value, members: frozenset) -> bool:
    try:
        return value in members
    except TypeError:  # an unhashable subject (a list, say) matches nothing
        return False
