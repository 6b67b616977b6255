"""Connection on a real Tornado IOStream over a socket pair (no server)."""

import asyncio
import socket

from tornado.iostream import IOStream

from notify_server.config import AccessConfig, CeleryConfig, RedisConfig, ServerConfig
from notify_server.edge.connection import CLOSED, CLOSING, OPEN, Connection
from notify_server.protocol.close_codes import SLOW
from notify_server.protocol.framing import text_frame
from notify_server.server import NotifyServer
from tests.support.wsframes import OPCODE_TEXT, read_available, split_frames, text_payloads


class Recorder:
    """The callbacks a Connection makes, in order."""

    def __init__(self):
        self.calls = []

    def connect(self, stream: IOStream, limit: int = 1 << 20) -> Connection:
        return Connection(
            stream, limit=limit, peer="peer",
            close_socket=lambda code, reason: self.calls.append(("close", code, reason)),
            on_leave=lambda: self.calls.append(("leave",)),
            on_closed=lambda: self.calls.append(("closed",)),
            on_slow=lambda dropped: self.calls.append(("slow", dropped)))


async def test_frames_the_socket_takes_go_straight_out_in_order(io_loop):
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    recorder = Recorder()
    connection = recorder.connect(IOStream(ours))

    for number in range(3):
        connection.write(text_frame(b'{"n":%d}' % number))

    assert text_payloads(read_available(peer)) == [b'{"n":0}', b'{"n":1}', b'{"n":2}']
    assert recorder.calls == [] and connection.state == OPEN


async def test_a_reader_that_stops_overflows_once_is_closed_with_4008_and_nothing_more_is_written(
        io_loop):
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setblocking(False)
    recorder = Recorder()
    connection = recorder.connect(IOStream(ours), limit=64 * 1024)
    frame = text_frame(b"x" * 1000)

    for _ in range(2000):  # about 2 MB into a peer that reads nothing
        connection.write(frame)

    [slow] = [call for call in recorder.calls if call[0] == "slow"]
    assert slow[1] > 64 * 1024
    assert recorder.calls[1:] == [("leave",), ("close", SLOW,
                                               "slow client: outgoing buffer full")]
    assert connection.state == CLOSING
    frames, cut = split_frames(read_available(peer))  # the last frame may be cut mid-way
    assert 0 < len(frames) < 2000 and all(f == (OPCODE_TEXT, b"x" * 1000) for f in frames)
    assert len(cut) < len(frame)


async def test_a_write_after_the_stream_closed_neither_raises_nor_writes_and_forgets_the_socket(
        io_loop):
    ours, _peer = socket.socketpair()
    stream = IOStream(ours)
    recorder = Recorder()
    connection = recorder.connect(stream)
    stream.close()  # Tornado calls on_close only on a later loop turn

    connection.write(text_frame(b"{}"))
    connection.write(text_frame(b"{}"))
    connection.lost()  # ... which then arrives

    assert connection.state == CLOSED
    assert recorder.calls == [("leave",), ("closed",)]


async def test_once_closing_nothing_but_the_close_frame_is_written(io_loop):
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    recorder = Recorder()
    connection = recorder.connect(IOStream(ours))
    connection.write(text_frame(b'{"before":1}'))

    connection.close(1001, "ping timeout")
    connection.write(text_frame(b'{"after":1}'))
    connection.send_ping()
    connection.close(1001, "again")
    connection.ping_timed_out()

    assert text_payloads(read_available(peer)) == [b'{"before":1}']
    assert recorder.calls == [("leave",), ("close", 1001, "ping timeout")]
    connection.lost()
    connection.lost()
    assert recorder.calls[2:] == [("closed",)] and connection.state == CLOSED


async def test_a_socket_that_left_open_is_never_added_to_the_hub_again(io_loop):
    server = NotifyServer(ServerConfig(
        redis=RedisConfig(url="redis://127.0.0.1:1/0", prefix="t"),
        celery=CeleryConfig(broker_url="redis://127.0.0.1:1/0", poll_interval=1.0),
        access=AccessConfig(max_connections=0, max_connections_per_ip=0), instance="test:0:1"))
    closed_early, closing = [], []
    for kept in (closed_early, closing):
        ours, _peer = socket.socketpair()
        stream = IOStream(ours)
        kept.append(server.connect(stream, lambda code, reason: None, "peer"))
        kept.append(stream)
    closed_early[1].close()  # a peer that reset during the handshake
    closing[0][0].close(1001, "ping timeout")  # then sends `resume`

    server.join(*closed_early[0])
    server.start_resume(*closing[0], "1-0")

    assert len(server.hub) == 0
    assert closed_early[0][0].state == CLOSED
    await server.redis.aclose()


async def test_a_direct_send_never_overtakes_bytes_tornado_left_in_the_stream(io_loop):
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    peer.setblocking(False)
    stream = IOStream(ours)
    connection = Recorder().connect(stream)
    connection.write(text_frame(b"ours-1"))
    tornados = b"T" * 200_000  # say, a pong Tornado wrote into a full socket
    stream.write(tornados)
    connection.tornado_wrote()
    received = read_available(peer)  # room in the socket again; the IOStream has not flushed yet

    connection.write(text_frame(b"ours-2"))
    while True:  # let the IOStream flush, reading as it goes
        await asyncio.sleep(0.01)
        chunk = read_available(peer)
        received += chunk
        if not chunk and not stream.writing():
            break

    first = text_frame(b"ours-1")
    assert received == first + tornados + text_frame(b"ours-2")
