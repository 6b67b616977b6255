"""WebSocket framing of server-to-client text messages (RFC 6455), pure.

Server frames are unmasked and, with compression off, identical for every
client: an event is framed once and the same bytes are written to all.
"""

import struct

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
