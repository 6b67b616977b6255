"""A raw WebSocket peer on a plain socket: it reads nothing it is not asked to,
and sees every frame the server sends, close frames included (the frames
are built and parsed by wsframes)."""

import socket
import struct
from typing import List, Optional, Tuple

from tests.support.wsframes import (OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, Frame,
                                    client_frame, parse_close, split_frames, upgrade_request)


def raw_handshake(port: int, receive_buffer: int = 0, query: str = "") -> socket.socket:
    """Open a WebSocket to /ws/tasks/ and return the socket right after the 101."""
    response, sock = upgrade(port, query, receive_buffer)
    assert b" 101 " in response.split(b"\r\n")[0], response
    return sock


def upgrade(port: int, query: str = "", receive_buffer: int = 0) -> Tuple[bytes, socket.socket]:
    """Ask for a WebSocket on /ws/tasks/: the response head, whatever its
    status, and the socket right after it."""
    sock = socket.socket()
    if receive_buffer:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", port))
    sock.sendall(upgrade_request(port, query))
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    return response, sock


def reset(sock: socket.socket) -> None:
    """Drop the connection with a TCP RST, as a phone losing its network does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until_close_frame(sock: socket.socket, timeout: float = 20.0) -> Tuple[int, Optional[int]]:
    """Drain a raw socket, answering nothing, until a close frame arrives:
    (text frames seen, close code)."""
    sock.settimeout(timeout)
    buffer, texts = b"", 0
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError("connection ended without a close frame")
        frames, buffer = split_frames(buffer + chunk)
        for opcode, payload in frames:
            if opcode == OPCODE_CLOSE:
                return texts, parse_close(payload)[0]
            texts += opcode == OPCODE_TEXT


class RawPeer:
    """A raw WebSocket client that reads the server's frames one at a time.

    `next_frame` returns (opcode, payload) of the next complete frame, or
    None once the server ended the TCP connection (a FIN or a reset).
    With `answer_pings`, it answers the server's pings itself and never
    returns them, so it can stay connected longer than the ping timeout.
    """

    def __init__(self, sock: socket.socket, answer_pings: bool = True):
        self.sock = sock
        self.answer_pings = answer_pings
        self._frames: List[Frame] = []
        self._buffer = b""

    @classmethod
    def connect(cls, port: int, query: str = "", answer_pings: bool = True) -> "RawPeer":
        return cls(raw_handshake(port, query=query), answer_pings)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_frame(self, timeout: float = 15.0) -> Optional[Frame]:
        """Raises socket.timeout when no frame arrives within `timeout`."""
        self.sock.settimeout(timeout)
        while True:
            while self._frames:
                opcode, payload = self._frames.pop(0)
                if opcode == OPCODE_PING and self.answer_pings:
                    self.send(client_frame(OPCODE_PONG, payload))
                    continue
                return opcode, payload
            try:
                chunk = self.sock.recv(1 << 20)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            self._frames, self._buffer = split_frames(self._buffer + chunk)

    def close(self) -> None:
        self.sock.close()
