"""A raw WebSocket peer on a plain socket: it reads nothing it is not asked to,
answers no ping, and sees every frame the server sends, close frames included."""

import base64
import os
import socket
import struct
from typing import List, Optional, Tuple

OPCODE_TEXT, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x1, 0x8, 0x9, 0xA


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
    key = base64.b64encode(os.urandom(16)).decode()
    path = "/ws/tasks/" + (f"?{query}" if query else "")
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    return response, sock


def reset(sock: socket.socket) -> None:
    """Drop the connection with a TCP RST, as a phone losing its network does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def split_frames(buffer: bytes) -> Tuple[List[Tuple[int, bytes]], bytes]:
    """The complete unmasked frames at the start of `buffer`, and the rest."""
    frames = []
    while len(buffer) >= 2:
        opcode, length, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if length == 126:
            length, offset = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            length, offset = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < offset + length:
            break
        frames.append((opcode, buffer[offset:offset + length]))
        buffer = buffer[offset + length:]
    return frames, buffer


def read_until_close_frame(sock: socket.socket, timeout: float = 20.0) -> Tuple[int, int]:
    """Drain a raw socket until a close frame arrives: (text frames seen, close code)."""
    sock.settimeout(timeout)
    buffer, texts = b"", 0
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise AssertionError("connection ended without a close frame")
        frames, buffer = split_frames(buffer + chunk)
        for opcode, payload in frames:
            if opcode == OPCODE_CLOSE:
                return texts, int.from_bytes(payload[:2], "big")
            texts += opcode == OPCODE_TEXT


def read_until_eof(sock: socket.socket, timeout: float = 30.0) -> List[Tuple[int, bytes]]:
    """Every frame the server sends until it ends the TCP connection."""
    sock.settimeout(timeout)
    buffer, frames = b"", []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return frames
        complete, buffer = split_frames(buffer + chunk)
        frames.extend(complete)


def send_frame(sock: socket.socket, opcode: int, payload: bytes) -> None:
    """Send one final, masked client frame (payload under 126 bytes)."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    sock.sendall(bytes((0x80 | opcode, 0x80 | len(payload))) + mask + masked)


def client_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
                 masked: bool = True, declared_length: Optional[int] = None) -> bytes:
    """One client frame of any size, as bytes: `rsv` is the RSV1-3 bits (0-7),
    `masked=False` leaves the mask bit unset, `declared_length` puts another
    length in the header than the payload's (to lie about a frame's size)."""
    length = len(payload) if declared_length is None else declared_length
    mask_bit = 0x80 if masked else 0
    header = bytes((0x80 * fin | (rsv & 7) << 4 | opcode & 0x0F,))
    if length < 126:
        header += bytes((mask_bit | length,))
    elif length < 65536:
        header += bytes((mask_bit | 126,)) + length.to_bytes(2, "big")
    else:
        header += bytes((mask_bit | 127,)) + length.to_bytes(8, "big")
    if not masked:
        return header + payload
    mask = os.urandom(4)
    return header + mask + _masked(payload, mask)


def _masked(payload: bytes, mask: bytes) -> bytes:
    """`payload` XOR the repeated 4-byte `mask`, as one big-integer XOR (fast for 64 KiB)."""
    if not payload:
        return b""
    key = (mask * (len(payload) // 4 + 1))[:len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(
        len(payload), "big")


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
        self._frames: List[Tuple[int, bytes]] = []
        self._buffer = b""

    @classmethod
    def connect(cls, port: int, query: str = "", answer_pings: bool = True) -> "RawPeer":
        return cls(raw_handshake(port, query=query), answer_pings)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_frame(self, timeout: float = 15.0) -> Optional[Tuple[int, bytes]]:
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
