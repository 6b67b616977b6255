"""WebSocket framing of server-to-client text messages (RFC 6455), pure.

Server frames are unmasked and, with compression off, identical for every
client: an event is framed once and the same bytes are written to all.
"""

import struct
from typing import List

TEXT_FIN = 0x81


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (UTF-8 JSON)."""
    length = len(payload)
    if length < 126:
        header = bytes((TEXT_FIN, length))
    elif length < 65536:
        header = struct.pack("!BBH", TEXT_FIN, 126, length)
    else:
        header = struct.pack("!BBQ", TEXT_FIN, 127, length)
    return header + payload


def payloads(data: bytes) -> List[bytes]:
    """Split concatenated unmasked frames back into their payloads (for tests and tools)."""
    out, offset = [], 0
    while offset < len(data):
        length = data[offset + 1] & 0x7F
        offset += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, offset)
            offset += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, offset)
            offset += 8
        out.append(data[offset:offset + length])
        offset += length
    return out
