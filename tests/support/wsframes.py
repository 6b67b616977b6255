"""The tests' one WebSocket codec (RFC 6455), and the raw wire around it.

Client frames are built here (masked or not, any opcode, fragments, close
frames with a code and reason, and the invalid ones attacks send: RSV bits, a
lying length); server frames are parsed here (final, unmasked, no RSV bits:
anything else fails the test). Also the upgrade request head, reading a raw
socket or stream until the server ends it, and a free loopback port. The
peers in raw_peer.py, async_peer.py and resuming_client.py use it.
"""

import asyncio
import base64
import os
import socket
from typing import Dict, List, Optional, Tuple, Union

OPCODE_CONTINUATION, OPCODE_TEXT, OPCODE_BINARY = 0x0, 0x1, 0x2
OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x8, 0x9, 0xA

Frame = Tuple[int, bytes]  # a parsed server frame: (opcode, payload)


# -- client frames ----------------------------------------------------------------

def client_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 masked: bool = True, declared_length: Optional[int] = None) -> bytes:
    """One client frame of any size, as bytes: `fin=False` makes a fragment,
    `rsv` is the RSV1-3 bits (0-7), `masked=False` leaves the mask bit unset,
    `declared_length` puts another length in the header than the payload's
    (to lie about a frame's size)."""
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


def close_payload(code: int, reason: Union[str, bytes] = b"") -> bytes:
    """A close frame's payload: the 2-byte `code`, then `reason` (bytes as
    they are, so a test can send a reason that is not UTF-8)."""
    return code.to_bytes(2, "big") + (reason.encode() if isinstance(reason, str) else reason)


def close_frame(code: Optional[int] = None, reason: Union[str, bytes] = b"") -> bytes:
    """A masked client close frame; `code=None` gives an empty one."""
    return client_frame(OPCODE_CLOSE, b"" if code is None else close_payload(code, reason))


# -- server frames ----------------------------------------------------------------

def split_frames(data: Union[bytes, bytearray]) -> Tuple[List[Frame], bytes]:
    """The complete server frames at the start of `data` as (opcode, payload),
    and the bytes after them (a frame not whole yet). Fails on a frame a
    server must not send here: masked, not final (the server never
    fragments), or with RSV bits (no extension is negotiated)."""
    frames, offset, size = [], 0, len(data)
    while size - offset >= 2:
        first, second = data[offset], data[offset + 1]
        assert first & 0xF0 == 0x80 and not second & 0x80, (
            f"not a final, unmasked server frame without RSV bits: "
            f"{bytes(data[offset:offset + 2])!r}")
        length, start = second & 0x7F, offset + 2
        if length >= 126:
            start += 2 if length == 126 else 8
            if size < start:
                break
            length = int.from_bytes(data[offset + 2:start], "big")
        if size < start + length:
            break
        frames.append((first & 0x0F, bytes(data[start:start + length])))
        offset = start + length
    return frames, bytes(data[offset:])


def text_payloads(data: bytes) -> List[bytes]:
    """The payloads of the text frames `data` consists of; fails if it holds
    any other frame or ends inside one."""
    frames, rest = split_frames(data)
    assert rest == b"", f"{len(rest)} bytes after the last whole frame: {rest[:40]!r}"
    assert all(opcode == OPCODE_TEXT for opcode, _ in frames), [op for op, _ in frames]
    return [payload for _, payload in frames]


def parse_close(payload: bytes) -> Tuple[Optional[int], str]:
    """A server close frame's (code, reason); (None, "") for an empty one.
    Fails on a 1-byte payload or a reason that is not UTF-8."""
    if not payload:
        return None, ""
    assert len(payload) >= 2, f"a close payload of one byte: {payload!r}"
    return int.from_bytes(payload[:2], "big"), payload[2:].decode("utf-8")


# -- the upgrade ------------------------------------------------------------------

def upgrade_request(port: int, query: str = "", headers: Optional[Dict[str, str]] = None,
                    path: str = "/ws/tasks/") -> bytes:
    """The request head of a WebSocket upgrade, as a browser sends it."""
    key = base64.b64encode(os.urandom(16)).decode()
    target = path + (f"?{query}" if query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13",
             *(f"{name}: {value}" for name, value in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- reading what the server sends ----------------------------------------------------

def read_available(sock: socket.socket) -> bytes:
    """What the non-blocking `sock` holds now: read until it would block or the peer closed."""
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def read_until_eof(sock: socket.socket, timeout: float = 30.0) -> List[Frame]:
    """Every whole frame the server sends on `sock` until it ends the TCP
    connection (a FIN or a reset); answers nothing. Raises socket.timeout
    when nothing arrives for `timeout`."""
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


async def read_stream_until_eof(reader: asyncio.StreamReader,
                                timeout: float = 30.0) -> Tuple[bytes, bool]:
    """Every byte the server sends on `reader` until it ends the connection,
    and whether it ended with a reset (True) rather than a FIN. Fails after
    `timeout`."""
    received = b""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError(f"the server kept the connection open for {timeout} s; "
                                 f"received {received[:200]!r}")
        try:
            chunk = await asyncio.wait_for(reader.read(1 << 16), remaining)
        except asyncio.TimeoutError:
            continue
        except ConnectionResetError:
            return received, True
        if not chunk:
            return received, False
        received += chunk


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for a
    process a test must start, or restart, on a known address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
