"""One client socket at the Tornado edge: whether it may still be written, and the writes.

An adapter. It bypasses `WebSocketHandler.write_message` (which frames each
message again and creates a Future and a Task per call) for the hot path;
Tornado still writes its own control frames (pong, close) on the same
stream, and frames are never split or interleaved: a direct send happens
only when neither our bytes nor Tornado's wait in the IOStream. Only public
IOStream calls (`closed`, `writing`, `write`) are used, and `writing()` only
after Tornado wrote (most writes need no call at all).
"""

import logging
from typing import Callable, List

from tornado.iostream import IOStream, StreamClosedError

from notify_server.protocol import close_codes

log = logging.getLogger(__name__)

OPEN, CLOSING, CLOSED = "open", "closing", "closed"

PING_FRAME = b"\x89\x00"  # final ping frame, empty payload


class Connection:
    """The state of one client socket, which gates every write to it.

    OPEN: frames go out. CLOSING: the server decided to close (`close`, a
    ping timeout, a slow client); Tornado writes the close frame and waits
    for the peer's. CLOSED: the stream is gone (`lost`, or a write found it
    closed). Leaving OPEN calls `on_leave()` exactly once, synchronously, so
    the caller takes the socket out of the hub and the heartbeat before
    anything else runs: after the server's close frame no data frame is
    written (RFC 6455 section 5.5.1). Reaching CLOSED calls `on_closed()`
    exactly once.

    `write(data)` hands `data` (one or more complete frames) to the kernel at
    once when the stream has nothing pending: no Future, no copy. What the
    socket does not take goes to the IOStream; frames written while that is
    draining wait in a backlog that follows in one write. When the backlog
    passes `limit` bytes it is dropped, `on_slow(dropped_bytes)` is called
    and the socket is closed with `close_codes.SLOW_CLIENT` (4008). Memory per
    client therefore stays under about twice `limit`, plus the kernel's
    socket buffer. `write` never raises for a closed or failing socket.

    Call on the event-loop thread only.
    """

    # What every write reads comes first: one cache line for the hot path.
    __slots__ = ("state", "_draining", "_tornado_wrote", "_socket", "_stream", "_backlog",
                 "_backlog_bytes", "_limit", "peer", "awaiting_pong", "_close_socket",
                 "_on_leave", "_on_closed", "_on_slow")

    def __init__(self, stream: IOStream, *, limit: int, peer: str,
                 close_socket: Callable[[int, str], None],
                 on_leave: Callable[[], None], on_closed: Callable[[], None],
                 on_slow: Callable[[int], None]):
        self.state = OPEN
        self.peer = peer
        self.awaiting_pong = False  # set by the heartbeat, cleared by `pong`
        self._stream = stream
        # TLS streams must encrypt through the IOStream; plain ones may take the fast path.
        self._socket = stream.socket if type(stream) is IOStream else None
        self._limit = limit
        self._close_socket = close_socket
        self._on_leave, self._on_closed, self._on_slow = on_leave, on_closed, on_slow
        self._backlog: List[bytes] = []
        self._backlog_bytes = 0
        self._draining = False  # bytes of ours wait in the IOStream
        # Bytes of Tornado's may wait in the IOStream (its 101 response, a pong):
        # until `writing()` says they are gone, no direct send may overtake them.
        self._tornado_wrote = True

    def write(self, data: bytes) -> None:
        # The hot path of every broadcast: a few attribute reads and one send.
        if self.state is not OPEN:
            return
        if self._draining:
            if self._stream.closed():  # a dead peer, not a slow one
                self.lost()
                return
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            if self._backlog_bytes > self._limit:
                self._overflow()
            return
        sent = 0
        # A closed stream is not `writing()` either: then the send fails (its
        # socket is closed) and the IOStream raises StreamClosedError below.
        if self._socket is not None and not (self._tornado_wrote and self._stream_busy()):
            try:
                sent = self._socket.send(data)
            except OSError:
                # Would block, or the peer is gone: the IOStream takes the bytes,
                # or meets the same error and closes the stream.
                sent = 0
            if sent == len(data):
                return
        self._hand_to_stream(memoryview(data)[sent:] if sent else data)

    def tornado_wrote(self) -> None:
        """Tornado wrote a frame of its own on the stream (it answers a ping
        with a pong, then calls `on_ping`): the next direct send first checks
        that the stream has nothing pending. While the socket is open this is
        the only frame Tornado 6.5 writes without us (with
        `websocket_ping_interval` unset); its closes end in a closed stream."""
        self._tornado_wrote = True

    def _stream_busy(self) -> bool:
        if self._stream.writing():
            return True
        self._tornado_wrote = False
        return False

    def close(self, code: int, reason: str) -> None:
        """Decide to close: leave OPEN, flush the backlog, then Tornado's close frame.

        Does nothing unless OPEN."""
        if self.state is not OPEN:
            return
        self.state = CLOSING
        self._on_leave()
        if self._backlog and not self._stream.closed():
            data = b"".join(self._backlog)
            self._backlog, self._backlog_bytes = [], 0
            self._hand_to_stream(data)
        self._close_socket(code, reason)

    def abort(self) -> None:
        """Drop the TCP connection now (a peer that never answered the close)."""
        self._stream.close()
        self.lost()

    @property
    def stream_closed(self) -> bool:
        """Whether the socket underneath is closed (whatever Tornado said)."""
        return self._stream.closed()

    def lost(self) -> None:
        """The stream is closed (Tornado's on_close, or found closed): forget it."""
        if self.state is CLOSED:
            return
        was_open = self.state is OPEN
        self.state = CLOSED
        self._backlog, self._backlog_bytes = [], 0
        if was_open:
            self._on_leave()
        self._on_closed()
        # Break the cycles through the callbacks: a closed socket is freed at once.
        self._close_socket = self._on_leave = self._on_closed = self._on_slow = _nothing

    # -- heartbeat (see `heartbeat.Heartbeat`) --------------------------------

    def send_ping(self) -> None:
        self.write(PING_FRAME)

    def pong(self) -> None:
        self.awaiting_pong = False

    def ping_timed_out(self) -> None:
        if self.state is OPEN:
            log.info("closing %s: no pong to the last ping", self.peer)
            self.close(*close_codes.PING_TIMEOUT)

    # -- writes the socket did not take at once --------------------------------

    def _hand_to_stream(self, data) -> None:
        try:
            future = self._stream.write(data)
        except StreamClosedError:
            # Tornado closed the stream and calls on_close only on a later loop turn.
            self.lost()
            return
        self._draining = True
        future.add_done_callback(self._drained)

    def _drained(self, future) -> None:
        self._draining = False
        if future.exception() is not None or not self._backlog or self.state is not OPEN:
            return
        data = b"".join(self._backlog)
        self._backlog, self._backlog_bytes = [], 0
        self._hand_to_stream(data)

    def _overflow(self) -> None:
        dropped = self._backlog_bytes
        self._backlog, self._backlog_bytes = [], 0
        self._on_slow(dropped)
        log.warning("closing slow client %s: more than %d bytes unsent", self.peer, self._limit)
        self.close(*close_codes.SLOW_CLIENT)


def _nothing(*_args) -> None:
    pass
