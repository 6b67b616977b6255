"""Heartbeats for every open socket from one timer.

Tornado's own `websocket_ping_interval` runs one asyncio Task per connection;
this sends the same protocol pings to all sockets from a single loop, which
saves a Task (about 1.5 KB) and a timer wake-up per connection.
"""

import asyncio
from typing import Protocol, Set

# Sockets pinged in one go; between two such slices other work runs. Pinging
# (and then reading the pongs of) 11,000 sockets at once held the loop for
# about 0.7 s and delayed every event of that moment by as much.
SLICE = 200
# The longest pause between two slices; all slices fit in a quarter of the timeout.
SLICE_GAP = 0.01


class Pingable(Protocol):
    awaiting_pong: bool

    def send_ping(self) -> None: ...

    def ping_timed_out(self) -> None: ...


class Heartbeat:
    """Every `interval` seconds, ping each socket; `timeout` seconds later,
    call `ping_timed_out()` on those whose `awaiting_pong` is still true (the
    socket clears it when a pong arrives) and that are still registered (a
    socket that closed or timed out has been `discard`ed, and is never pinged
    or timed out again). Call on the event-loop thread.

    `interval` 0 disables heartbeats; otherwise 0 < `timeout` <= `interval`
    (ValueError), so one round ends before the next begins. A round pings
    `SLICE` sockets at a time, spread over at most a quarter of `timeout`,
    so that neither the pings nor the pongs that answer them arrive as one
    block; each socket still gets at least `timeout` to answer.
    """

    def __init__(self, interval: float, timeout: float):
        if interval < 0 or (interval > 0 and not 0 < timeout <= interval):
            raise ValueError(f"heartbeat needs 0 < timeout <= interval, got {timeout}, {interval}")
        self._interval, self._timeout = interval, timeout
        self._sockets: Set[Pingable] = set()

    def add(self, sock: Pingable) -> None:
        self._sockets.add(sock)

    def discard(self, sock: Pingable) -> None:
        self._sockets.discard(sock)

    async def run(self) -> None:
        """Ping forever (until cancelled); returns at once when `interval` is 0."""
        if self._interval <= 0:
            return
        await asyncio.sleep(self._timeout)  # the first round comes one interval after start
        while True:
            await asyncio.sleep(self._interval - self._timeout)
            pinged = tuple(self._sockets)
            slices = range(0, len(pinged), SLICE)
            gap = min(SLICE_GAP, self._timeout / 4 / max(1, len(slices)))
            for start in slices:
                if start:
                    await asyncio.sleep(gap)
                for sock in pinged[start:start + SLICE]:
                    if sock in self._sockets:  # not closed while earlier slices went out
                        sock.awaiting_pong = True
                        sock.send_ping()
            await asyncio.sleep(self._timeout)
            for sock in pinged:
                if sock.awaiting_pong and sock in self._sockets:
                    sock.ping_timed_out()
