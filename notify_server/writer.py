"""Writing pre-framed WebSocket bytes to one client's Tornado IOStream.

An adapter. It bypasses `WebSocketHandler.write_message` (which frames each
message again and creates a Future and a Task per call) for the hot path
only; Tornado still writes its own control frames (pong, close) on the
same stream, and frames are never split or interleaved.
"""

from typing import Callable, List

from tornado.iostream import IOStream, StreamClosedError


class FrameWriter:
    """Sends whole frames to one client without ever blocking the broadcaster.

    `write(data)` hands `data` (one or more complete frames) to the kernel at
    once when the stream has nothing pending: no Future, no copy. What the
    socket does not take goes to the IOStream; frames written while that is
    draining wait in a backlog that follows in one write. When the backlog
    passes `limit` bytes, it is dropped and `on_overflow(dropped_bytes)` is
    called once;
    later writes are ignored. Memory per client therefore stays under about
    twice `limit`, plus the kernel's socket buffer.

    Call on the event-loop thread only.
    """

    __slots__ = ("_stream", "_socket", "_limit", "_on_overflow", "_backlog",
                 "_backlog_bytes", "_draining", "overflowed")

    def __init__(self, stream: IOStream, limit: int, on_overflow: Callable[[int], None]):
        self._stream = stream
        # TLS streams must encrypt through the IOStream; plain ones may take the fast path.
        self._socket = stream.socket if type(stream) is IOStream else None
        self._limit, self._on_overflow = limit, on_overflow
        self._backlog: List[bytes] = []
        self._backlog_bytes = 0
        self._draining = False
        self.overflowed = False

    def write(self, data: bytes) -> None:
        # The hot path of every broadcast: keep it to a few attribute reads and one send.
        if self.overflowed:
            return
        if self._draining:
            self._backlog.append(data)
            self._backlog_bytes += len(data)
            if self._backlog_bytes > self._limit:
                self._overflow()
            return
        sent = 0
        if self._socket is not None and not self._stream._write_buffer._size:
            try:
                sent = self._socket.send(data)
            except OSError:
                # Would block, or the peer is gone: the IOStream takes the bytes,
                # or meets the same error and closes the stream.
                sent = 0
            if sent == len(data):
                return
        self._hand_to_stream(memoryview(data)[sent:] if sent else data)

    def _hand_to_stream(self, data) -> None:
        try:
            future = self._stream.write(data)
        except StreamClosedError:
            return
        self._draining = True
        future.add_done_callback(self._drained)

    def _drained(self, future) -> None:
        self._draining = False
        if future.exception() is not None or not self._backlog:
            return
        data = b"".join(self._backlog)
        self._backlog, self._backlog_bytes = [], 0
        if not self._stream.closed():
            self._hand_to_stream(data)

    def _overflow(self) -> None:
        self.overflowed = True
        dropped = self._backlog_bytes
        self._backlog, self._backlog_bytes = [], 0
        self._on_overflow(dropped)
