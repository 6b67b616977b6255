"""Clients that resume as the JavaScript client does, hundreds on one event loop.

A `ResumingClient` keeps one WebSocket open to /ws/tasks/ (through nginx, in
the tests that use it). Whenever the socket ends, with a close frame (1001 from
a process shutting down) or without one (a process killed, its TCP connection
cut by nginx), it waits as notify-client.js does (full jitter: a random delay
in [0, min(15 s, 0.5 s x 2^attempt)], the attempt counted from the last open
socket) and connects again with `?last_event_id=` set to the last id it
received. It records what a client would check: every event id in arrival
order, the progress numbers of one tag, each `queue_status`, each `resync`,
and how many times it reconnected.

The wire is read with the tests' codec (wsframes: text frames of any length,
pings answered, the close handshake completed) rather than Tornado's client:
three hundred clients at 50 events/s are 15,000 frames a second for this one
Python process, which must keep up or the servers close it as a slow client.
"""

import asyncio
import collections
import random
import time
from typing import List, Optional, Tuple

import orjson

from tests.support.async_peer import read_response
from tests.support.wsframes import (OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG, OPCODE_TEXT,
                                    client_frame, close_frame, parse_close, split_frames,
                                    upgrade_request)

# notify-client.js's defaults (minDelay, maxDelay), in seconds.
MIN_DELAY, MAX_DELAY = 0.5, 15.0


def stream_position(event_id: str) -> Tuple[int, int]:
    """A Redis stream id (`ms-seq`) as a pair that sorts in stream order."""
    millis, _, sequence = event_id.partition("-")
    return int(millis), int(sequence or 0)


class ResumingClient:
    """One simulated user on `port`, resuming after `first_id` from its
    first connection on, and after its last received id from then on.

    `run` connects and reads until `stop`; it never raises for a dropped or
    refused connection (it retries with the JavaScript client's backoff).
    Only the event-loop thread may touch it.
    """

    def __init__(self, port: int, first_id: str, tag: str):
        self.port, self.tag = port, tag
        self.last_id = first_id
        self.ids: List[str] = []
        self.numbers: List[int] = []          # `current` of this tag's task_progress
        self.out_of_order = 0                 # ids at or below the previous one
        self.resyncs: List[str] = []          # their reasons
        self.queue_statuses: List[Tuple[float, dict]] = []   # (time.time() received, data)
        self.connections = 0                  # upgrades answered with 101
        self.refusals = 0                     # attempts refused or failed before a 101
        self.drops: List[Optional[int]] = []  # close code per drop (None: no close frame)
        self.live = asyncio.Event()           # set once the first queue_status arrived
        self.connected = False
        self.error: Optional[BaseException] = None   # what ended `run` early, if anything
        self.last_type: Optional[str] = None
        self._stopping = False
        self._writer: Optional[asyncio.StreamWriter] = None
        self._task: Optional[asyncio.Task] = None

    @property
    def reconnects(self) -> int:
        return max(0, self.connections - 1)

    def describe(self) -> str:
        """Its state in one line, for a failure message."""
        return (f"{len(self.numbers)} events, last id {self.last_id}, last type {self.last_type}, "
                f"{'connected' if self.connected else 'not connected'}, "
                f"{self.connections} connections, drops {self.drops}, "
                f"{self.refusals} refusals, resyncs {self.resyncs}, error {self.error!r}")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        """Close the socket and stop reconnecting."""
        self._stopping = True
        if self._writer is not None:
            self._writer.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(self) -> None:
        try:
            await self._reconnect_forever()
        except Exception as exc:  # kept for the test's failure message
            self.error = exc
            raise

    async def _reconnect_forever(self) -> None:
        attempt = 0
        while not self._stopping:
            try:
                opened = await self._session()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                    asyncio.TimeoutError):
                opened = False
            if self._stopping:
                return
            if opened:
                attempt = 0
            await asyncio.sleep(random.uniform(0, min(MAX_DELAY, MIN_DELAY * 2 ** attempt)))
            attempt += 1

    async def _session(self) -> bool:
        """One connection: True once it was upgraded (and has now ended)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", self.port), 10)
        self._writer = writer
        try:
            writer.write(upgrade_request(self.port, f"last_event_id={self.last_id}"))
            response = await asyncio.wait_for(read_response(reader), 10)
            if response.status != 101:
                self.refusals += 1
                return False
            self.connections += 1
            self.connected = True
            self.drops.append(await self._read(reader, writer))
            return True
        finally:
            self.connected = False
            writer.close()
            self._writer = None

    async def _read(self, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> Optional[int]:
        """Read frames until the connection ends; returns the close code
        (None when it ended without a close frame)."""
        buffer = b""
        while True:
            try:
                chunk = await reader.read(1 << 16)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return None
            frames, buffer = split_frames(buffer + chunk)
            for opcode, payload in frames:
                if opcode == OPCODE_TEXT:
                    self._receive(orjson.loads(payload))
                elif opcode == OPCODE_PING:
                    writer.write(client_frame(OPCODE_PONG, payload))
                elif opcode == OPCODE_CLOSE:
                    code, _ = parse_close(payload)
                    writer.write(close_frame(code))
                    return 1005 if code is None else code  # 1005: no status code in it

    def _receive(self, message: dict) -> None:
        kind = self.last_type = message["type"]
        event_id = message.get("id")
        if event_id is not None:
            if self.ids and stream_position(event_id) <= stream_position(self.ids[-1]):
                self.out_of_order += 1
            self.ids.append(event_id)
            self.last_id = event_id
            data = message["data"]
            if kind == "task_progress" and data.get("avid") == self.tag:
                self.numbers.append(data["current"])
        elif kind == "queue_status":
            self.queue_statuses.append((time.time(), message["data"]))
            self.live.set()
        elif kind == "resync":
            self.resyncs.append(message["data"]["reason"])


class Fleet:
    """`count` resuming clients on `port`, all starting after `first_id`."""

    def __init__(self, port: int, count: int, first_id: str, tag: str):
        self.clients = [ResumingClient(port, first_id, tag) for _ in range(count)]

    async def start(self, timeout: float = 30.0) -> None:
        """Connect every client; returns once each has its first queue_status
        (it is then in the server's live stream)."""
        for client in self.clients:
            client.start()
        waiting = [client.live.wait() for client in self.clients]
        await asyncio.wait_for(asyncio.gather(*waiting), timeout)

    async def stop(self) -> None:
        await asyncio.gather(*(client.stop() for client in self.clients))

    async def wait_for_numbers(self, count: int, timeout: float) -> None:
        """Until every client holds at least `count` progress numbers of its
        tag; fails naming how many clients fall short, after `timeout`, or at
        once when one that falls short got `resync` (it will not catch up)."""
        deadline = time.monotonic() + timeout
        while True:
            short = [client for client in self.clients if len(client.numbers) < count]
            if not short:
                return
            told = collections.Counter(reason for client in short for reason in client.resyncs)
            if told:
                raise AssertionError(
                    f"{sum(1 for client in short if client.resyncs)} of {len(self.clients)} "
                    f"clients got resync and miss events; reasons: {dict(told)}; the first: "
                    + next(client.describe() for client in short if client.resyncs))
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(short)} of {len(self.clients)} clients have fewer than {count} "
                    f"events after {timeout} s; the first of them: "
                    + "; ".join(client.describe() for client in short[:5]))
            await asyncio.sleep(0.2)

    @property
    def reconnects(self) -> int:
        return sum(client.reconnects for client in self.clients)

    @property
    def resyncs(self) -> int:
        return sum(len(client.resyncs) for client in self.clients)
