"""A WebSocket peer on asyncio streams that sees the wire as it is.

It binds the loopback source address it is given (127.0.0.2 is another
client address to the server than 127.0.0.1), sends its own request head,
and shows a refused upgrade as its HTTP status, headers and body, or an
accepted socket as its frames, close frames included. The server's pings
are answered and not shown. Many peers run on one event loop, so a test can
hold hundreds of sockets open at once.
"""

import asyncio
import dataclasses
from typing import Dict, List, Optional, Tuple

from tests.support.wsframes import (OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, Frame,
                                    client_frame, close_frame, parse_close, split_frames,
                                    upgrade_request)


@dataclasses.dataclass
class Response:
    """An HTTP response head, names of headers lower-cased, and its body
    (empty for a 101)."""

    status: int
    headers: Dict[str, str]
    body: bytes


async def open_stream(port: int, source: str = "127.0.0.1",
                      timeout: float = 10.0) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the server on 127.0.0.1:`port` from `source`."""
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), timeout)


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one HTTP response head, and its body when it has a Content-Length.
    Raises `asyncio.IncompleteReadError` if the connection ends first."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.split("\r\n")
    headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = b""
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return Response(int(status_line.split(" ")[1]), headers, body)


class AsyncPeer:
    """One upgrade attempt: `response` says what the server answered; when
    that is a 101 (`accepted`), the socket is open for `send_text`,
    `next_frame` and `until_close`, otherwise it is already closed."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 response: Response):
        self.response = response
        self._reader, self._writer = reader, writer
        self._frames: List[Frame] = []
        self._buffer = b""

    @classmethod
    async def upgrade(cls, port: int, *, query: str = "", headers: Optional[Dict[str, str]] = None,
                      source: str = "127.0.0.1", timeout: float = 10.0) -> "AsyncPeer":
        """Ask for a WebSocket on /ws/tasks/ from `source`; fails if the server
        ends the connection without an HTTP response."""
        reader, writer = await open_stream(port, source, timeout)
        writer.write(upgrade_request(port, query, headers))
        try:
            response = await asyncio.wait_for(read_response(reader), timeout)
        except BaseException:
            writer.close()
            raise
        peer = cls(reader, writer, response)
        if not peer.accepted:
            peer.close()
        return peer

    @property
    def accepted(self) -> bool:
        return self.response.status == 101

    def send_text(self, text: str) -> None:
        self._writer.write(client_frame(OPCODE_TEXT, text.encode()))

    def send_bytes(self, data: bytes) -> None:
        """Write bytes as they are (frames built beforehand, say)."""
        self._writer.write(data)

    async def next_frame(self, timeout: float = 15.0) -> Optional[Frame]:
        """The next (opcode, payload) other than a ping, or None once the
        server ended the connection. Raises `asyncio.TimeoutError`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            while self._frames:
                opcode, payload = self._frames.pop(0)
                if opcode == OPCODE_PING:
                    self._writer.write(client_frame(OPCODE_PONG, payload))
                    continue
                return opcode, payload
            remaining = max(0.0, deadline - asyncio.get_running_loop().time())
            try:
                chunk = await asyncio.wait_for(self._reader.read(1 << 16), remaining)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            frames, self._buffer = split_frames(self._buffer + chunk)
            self._frames.extend(frames)

    async def until_close(self, timeout: float = 20.0) -> Tuple[List[Frame], Optional[int], str]:
        """The frames before the server's close frame, and that frame's code
        and reason. Answers the close (the server then ends the connection:
        `until_ended`); fails if the connection ends without a close frame,
        or after `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        before: List[Frame] = []
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            try:
                frame = await self.next_frame(max(0.0, remaining))
            except asyncio.TimeoutError:
                raise AssertionError(f"no close frame within {timeout} s; "
                                     f"{len(before)} frames before: {before[-5:]}") from None
            if frame is None:
                raise AssertionError(f"the connection ended without a close frame; "
                                     f"{len(before)} frames before: {before[-5:]}")
            opcode, payload = frame
            if opcode == OPCODE_CLOSE:
                code, reason = parse_close(payload)
                self._writer.write(close_frame(code))
                return before, code, reason
            before.append(frame)

    async def until_ended(self, timeout: float = 20.0) -> List[Frame]:
        """The frames the server still sends until it ends the connection
        (none, after its close frame); then closes this end too. Fails after
        `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        after: List[Frame] = []
        try:
            while True:
                remaining = max(0.0, deadline - asyncio.get_running_loop().time())
                try:
                    frame = await self.next_frame(remaining)
                except asyncio.TimeoutError:
                    raise AssertionError(f"the server kept the connection open for {timeout} s; "
                                         f"frames: {after[-5:]}") from None
                if frame is None:
                    return after
                after.append(frame)
        finally:
            self.close()

    def close(self) -> None:
        self._writer.close()
