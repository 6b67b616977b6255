"""The soak's load client: one process holding the soak's sockets (picows on uvloop), churning some.

Driven by bench/soak.py over stdin/stdout, one JSON object per line each way (as
bench/loadclient.py is, through `bench.procs.serve_commands`). Commands:

- `connect {url, steady, kinds, subjects, follow}`: open `steady` sockets that stay, and
  per churn kind (`kinds`: {"reset": n, "clean": n, "resume": n}) n sockets that will
  reconnect. Every socket sends `subscribe` with its subject once open: a steady, reset
  or clean socket one of `subjects` (in turn), a resume socket `follow`.
- `churn_start {min_s, max_s}`: each churning socket, every uniform(min_s, max_s) s, closes
  and reconnects: `reset` with SO_LINGER 0 then close (the kernel sends RST), `clean` with
  a close frame (and the server's answer), both reconnecting fresh; `resume` closes one way
  or the other in turn and reconnects with `?last_event_id=` of the last id it received.
- `churn_stop`: every churning socket finishes its cycle (reconnected) and stops churning;
  replies once all are open again.
- `status`: open sockets, reconnects per kind, unexpected closes, frames, resyncs, errors.
- `report`: each resume socket's log (its subject's event ids and `resync` marks, in
  arrival order), the wall-clock times of the resyncs every socket got, and the resume
  sockets' resyncs with their reasons.
- `close`: drop every socket.

A resume socket parses each frame (orjson); the others only count frames and look for
`"type":"resync"`, so the process stays cheap at a few thousand frames a second.
A socket the server closes unasked is counted and reopened (fresh), so the count of open
sockets is back to the total once the churn stops.
"""

import asyncio
import random
import socket
import struct
import time
from typing import Dict, List, Optional

import orjson
import uvloop
from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

from bench.loadclient import raise_fd_limit
from bench.procs import serve_commands
from bench.soakcheck import RESYNC

TEXT = WSMsgType.TEXT
RESYNC_MARK = b'"type":"resync"'
LINGER_ZERO = struct.pack("ii", 1, 0)


class Totals:
    """Counters shared by every socket of the process."""

    def __init__(self):
        self.frames = 0
        self.unexpected_closes = 0
        self.close_codes: Dict[str, int] = {}
        self.resync_times: List[float] = []
        self.follower_resyncs: List[list] = []
        self.reconnects: Dict[str, int] = {"reset": 0, "clean": 0, "resume": 0}
        self.errors: Dict[str, int] = {}

    def error(self, exc: BaseException) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1


TOTALS = Totals()


class Sock(WSListener):
    """One logical client: its socket is replaced on each reconnect, its state kept."""

    def __init__(self, kind: str, subjects: List[str], follows: bool):
        self.kind = kind
        self.subscribe = orjson.dumps({"action": "subscribe", "avids": subjects})
        self.subject = subjects[0]
        self.follows = follows
        self.transport: Optional[WSTransport] = None
        self.leaving = False      # we asked for this close
        self.last_id: Optional[str] = None
        self.log: List[str] = []
        self.closes = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.leaving = False
        transport.send(TEXT, self.subscribe)

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        kind = frame.msg_type
        if kind is TEXT:
            TOTALS.frames += 1
            payload = frame.get_payload_as_bytes()
            if self.follows:
                self._follow(orjson.loads(payload))
            elif RESYNC_MARK in payload:
                TOTALS.resync_times.append(time.time())
        elif kind is WSMsgType.CLOSE:
            if not self.leaving:
                code = str(frame.get_close_code())
                TOTALS.close_codes[code] = TOTALS.close_codes.get(code, 0) + 1
            transport.disconnect()

    def _follow(self, message: dict) -> None:
        if message.get("type") == "resync":
            TOTALS.resync_times.append(time.time())
            TOTALS.follower_resyncs.append([time.time(), (message.get("data") or {}).get("reason")])
            self.log.append(RESYNC)
            self.last_id = None  # as the JS client: the next reconnect starts fresh
            return
        event_id = message.get("id")
        if event_id is None:
            return
        self.last_id = event_id
        data = message.get("data")
        if isinstance(data, dict) and data.get("avid") == self.subject:
            self.log.append(event_id)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if transport is self.transport:
            self.transport = None
            if not self.leaving:
                TOTALS.unexpected_closes += 1

    async def open(self, url: str) -> None:
        """Connect (resuming from `last_id` if this is a resume socket that has one),
        retrying every 0.5 s until it works."""
        while True:
            target = url
            if self.follows and self.last_id is not None:
                target = f"{url}?last_event_id={self.last_id}"
            try:
                await ws_connect(lambda: self, target, websocket_handshake_timeout=15)
                return
            except Exception as exc:  # counted; the soak checks there were none
                TOTALS.error(exc)
                await asyncio.sleep(0.5)

    async def leave(self, hard: bool) -> None:
        """Close this socket: RST (`hard`) or a close frame answered by the server's."""
        transport = self.transport
        if transport is None:
            return
        self.leaving = True
        if hard:
            sock = transport.underlying_transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            transport.disconnect(graceful=False)
        else:
            transport.send_close(WSCloseCode.OK)
        try:
            await asyncio.wait_for(transport.wait_disconnected(), 10)
        except asyncio.TimeoutError:
            transport.disconnect(graceful=False)
            await transport.wait_disconnected()
        self.closes += 1


class SoakClient:
    def __init__(self):
        self.socks: List[Sock] = []
        self.url = ""
        self.churning = False
        self.churners: List[asyncio.Task] = []
        self.keeper: Optional[asyncio.Task] = None

    async def connect(self, url: str, steady: int, kinds: Dict[str, int], subjects: List[str],
                      follow: str) -> dict:
        self.url = url
        number = 0
        for kind, count in [("steady", steady), *kinds.items()]:
            for _ in range(count):
                if kind == "resume":
                    self.socks.append(Sock(kind, [follow], True))
                else:
                    self.socks.append(Sock(kind, [subjects[number % len(subjects)]], False))
                    number += 1
        semaphore = asyncio.Semaphore(100)

        async def one(sock: Sock) -> None:
            async with semaphore:
                await sock.open(url)

        started = time.monotonic()
        await asyncio.gather(*(one(sock) for sock in self.socks))
        self.keeper = asyncio.ensure_future(self._keep_open())
        return {"connected": self.open_count(), "seconds": round(time.monotonic() - started, 2)}

    async def _keep_open(self) -> None:
        """Reopen a socket the server closed unasked (counted in `unexpected_closes`)."""
        while True:
            await asyncio.sleep(1.0)
            for sock in self.socks:
                if sock.transport is None and not sock.leaving:
                    sock.leaving = True  # not twice
                    asyncio.ensure_future(sock.open(self.url))

    def open_count(self) -> int:
        return sum(1 for sock in self.socks if sock.transport is not None)

    async def _churn(self, sock: Sock, min_s: float, max_s: float) -> None:
        while self.churning:
            await asyncio.sleep(random.uniform(min_s, max_s))
            if sock.kind == "resume":
                hard = sock.closes % 2 == 0
            else:
                hard = sock.kind == "reset"
            await sock.leave(hard)
            await sock.open(self.url)
            TOTALS.reconnects[sock.kind] += 1

    def churn_start(self, min_s: float, max_s: float) -> dict:
        self.churning = True
        self.churners = [asyncio.ensure_future(self._churn(sock, min_s, max_s))
                         for sock in self.socks if sock.kind != "steady"]
        return {"churning": len(self.churners)}

    async def churn_stop(self) -> dict:
        self.churning = False
        await asyncio.gather(*self.churners)
        self.churners = []
        deadline = time.monotonic() + 30
        while self.open_count() < len(self.socks) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return self.status()

    def status(self) -> dict:
        return {"open": self.open_count(), "sockets": len(self.socks), "frames": TOTALS.frames,
                "reconnects": TOTALS.reconnects, "unexpected_closes": TOTALS.unexpected_closes,
                "close_codes": TOTALS.close_codes, "resyncs": len(TOTALS.resync_times),
                "errors": TOTALS.errors}

    def report(self) -> dict:
        return {"followers": [sock.log for sock in self.socks if sock.follows],
                "resync_times": TOTALS.resync_times,
                "follower_resyncs": TOTALS.follower_resyncs}

    def close(self) -> dict:
        if self.keeper is not None:
            self.keeper.cancel()
        closed = 0
        for sock in self.socks:
            if sock.transport is not None:
                sock.leaving = True
                sock.transport.disconnect()
                closed += 1
        return {"closed": closed}

    async def handle(self, command: dict) -> dict:
        name = command.pop("cmd")
        if name == "connect":
            return await self.connect(**command)
        if name == "churn_start":
            return self.churn_start(**command)
        if name == "churn_stop":
            return await self.churn_stop()
        if name == "status":
            return self.status()
        if name == "report":
            return self.report()
        if name == "close":
            return self.close()
        raise ValueError(f"unknown command {name!r}")


async def main() -> None:
    raise_fd_limit()
    client = SoakClient()
    await serve_commands(client.handle)
    client.close()


if __name__ == "__main__":
    uvloop.run(main())
