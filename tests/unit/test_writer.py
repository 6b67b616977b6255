"""FrameWriter on a real Tornado IOStream over a socket pair (no server)."""

import socket

from tornado.iostream import IOStream

from notify_server.framing import payloads, text_frame
from notify_server.writer import FrameWriter


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


async def test_frames_the_socket_takes_go_straight_out_in_order(io_loop):
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    overflows = []
    writer = FrameWriter(IOStream(ours), 1 << 20, overflows.append)

    for number in range(3):
        writer.write(text_frame(b'{"n":%d}' % number))

    assert payloads(read_all(peer)) == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert overflows == []


async def test_a_reader_that_stops_overflows_the_backlog_once_and_nothing_more_is_written(io_loop):
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setblocking(False)
    overflows = []
    writer = FrameWriter(IOStream(ours), 64 * 1024, overflows.append)
    frame = text_frame(b"x" * 1000)

    for _ in range(2000):  # about 2 MB into a peer that reads nothing
        writer.write(frame)

    assert len(overflows) == 1 and overflows[0] > 64 * 1024
    assert writer.overflowed
    received = payloads(read_all(peer))[:-1]  # the last frame may be cut mid-way
    assert 0 < len(received) < 2000 and all(p == b"x" * 1000 for p in received)
