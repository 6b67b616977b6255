"""The load client: one process holding M WebSocket connections (picows on uvloop).

Driven by the orchestrator over stdin/stdout, one JSON object per line each way
(`{"cmd": ...}` in, a reply object out). Commands:

- `connect {url, count, concurrency, sources, deadline_s}`: open `count` sockets
  (from the loopback `sources` addresses in turn); replies with timings.
- `begin {base, count}`: start recording events `base .. base+count-1`.
- `wait {total, timeout_s, quiet}`: return once every connection has every event
  of the step, or after `timeout_s`, or after `quiet` s without a new one.
- `report`: per-event first/last arrival, latencies, losses, duplicates, CPU.
- `drain {quiet, timeout_s}`: wait until no frame arrived for `quiet` seconds.
- `probe_start {interval}` / `probe_stop`: ping round trips on one connection.
- `close`: drop every connection. `exit`: stop.

Per frame the work is a byte scan for `"seq":` and a few list updates; the
send time is parsed once per event, at its first arrival (see bench.stats).
A frame whose sequence number is not above that connection's last one is
counted as duplicated (neither system reorders a connection's frames).
`latency_growth_ms` is the median latency to the last client of the step's
last fifth of events minus that of its first fifth: a server that cannot
sustain the rate shows it growing.
"""

import asyncio
import math
import resource
import time

import uvloop
from picows import WSListener, WSMsgType, WSTransport, ws_connect

from bench.procs import serve_commands
from bench.stats import percentile, scan_sent, scan_seq, summary_ms

monotonic = time.monotonic
TEXT = WSMsgType.TEXT
PING = b'{"action":"ping"}'
PONG_PREFIX = b'{"type":'


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Recorder:
    """Arrival times of the events of the current step, shared by every connection."""

    def __init__(self):
        self.begin(0, 0)
        self.disconnected = 0
        self.last_frame_at = 0.0

    def begin(self, base: int, count: int) -> None:
        self.base, self.count = base, count
        self.first = [0.0] * count
        self.last = [0.0] * count
        self.sent = [math.nan] * count
        self.hits = [0] * count
        self.delivered = self.duplicated = self.stale = self.other = 0
        self.cpu_at_begin = cpu_seconds()
        self.begun_at = monotonic()

    def on_frame(self, client: "Client", payload: bytes, now: float) -> None:
        self.last_frame_at = now
        seq = scan_seq(payload)
        if seq < 0:
            self.other += 1
            return
        if seq <= client.last_seq:
            self.duplicated += 1
            return
        client.last_seq = seq
        index = seq - self.base
        if index < 0 or index >= self.count:
            self.stale += 1
            return
        if self.hits[index] == 0:
            self.first[index] = now
            self.sent[index] = scan_sent(payload)
        self.hits[index] += 1
        self.last[index] = now
        self.delivered += 1

    def report(self, connections: int) -> dict:
        to_last, to_first, complete, partial = [], [], 0, 0
        window_start, window_end = math.inf, 0.0
        for index in range(self.count):
            hits = self.hits[index]
            if hits == 0:
                continue
            sent = self.sent[index]
            to_first.append(self.first[index] - sent)
            to_last.append(self.last[index] - sent)
            window_start = min(window_start, sent)
            window_end = max(window_end, self.last[index])
            if hits >= connections:
                complete += 1
            else:
                partial += 1
        window = window_end - window_start if window_end > window_start else None
        fifth = max(1, len(to_last) // 5)
        growth = (percentile(to_last[-fifth:], 0.5) - percentile(to_last[:fifth], 0.5)
                  if len(to_last) >= 5 else None)
        expected = self.count * connections
        return {
            "events": self.count, "events_complete": complete, "events_partial": partial,
            "events_never_seen": self.count - complete - partial,
            "deliveries": self.delivered, "expected_deliveries": expected,
            "lost": expected - self.delivered, "duplicated": self.duplicated,
            "stale_frames": self.stale, "other_frames": self.other,
            "latency_last_client": summary_ms(to_last),
            "latency_first_client": summary_ms(to_first),
            "latency_growth_ms": round(growth * 1000, 3) if growth is not None else None,
            "window_s": round(window, 3) if window else None,
            "deliveries_per_s": round(self.delivered / window, 1) if window else None,
            "client_cpu_s": round(cpu_seconds() - self.cpu_at_begin, 3),
            "disconnected_total": self.disconnected,
        }


RECORDER = Recorder()


class Client(WSListener):
    __slots__ = ("last_seq", "transport", "probe")

    def __init__(self):
        self.last_seq = -1
        self.transport = None
        self.probe = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame) -> None:
        if frame.msg_type is TEXT:
            now = monotonic()
            payload = frame.get_payload_as_bytes()
            if self.probe is not None and payload.startswith(PONG_PREFIX) and b'"pong"' in payload[:20]:
                self.probe.pong(now)
                return
            RECORDER.on_frame(self, payload, now)
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.transport is not None:
            RECORDER.disconnected += 1
        self.transport = None


class Probe:
    """Sends `ping` on one connection every `interval` s and times the `pong`
    (a stand-in for the server's event-loop lag when it exports none)."""

    def __init__(self, client: Client, interval: float):
        self.client, self.interval = client, interval
        self.rtts, self.timeouts = [], 0
        self.sent_at = None
        self.task = asyncio.ensure_future(self._run())

    def pong(self, now: float) -> None:
        if self.sent_at is not None:
            self.rtts.append(now - self.sent_at)
            self.sent_at = None

    async def _run(self) -> None:
        while True:
            if self.sent_at is not None and monotonic() - self.sent_at > 2.0:
                self.timeouts += 1
                self.sent_at = None
            if self.sent_at is None and self.client.transport is not None:
                self.sent_at = monotonic()
                self.client.transport.send(TEXT, PING)
            await asyncio.sleep(self.interval)


class LoadClient:
    def __init__(self):
        self.clients = []
        self.probe = None

    def socket_for(self, url: str, number: int):
        """The listener factory and URL of socket `number` (a subclass may give
        each socket its own, e.g. a token: bench.scopedclient)."""
        return Client, url

    async def connect(self, url: str, count: int, concurrency: int = 200,
                      sources=("127.0.0.1",), deadline_s: float = 60.0, retries: int = 2) -> dict:
        """Open `count` sockets, `concurrency` handshakes at a time; failed ones are
        retried (up to `retries` more rounds, 20 at a time) until `deadline_s`."""
        RECORDER.disconnected = 0
        handshakes, errors = [], {}
        deadline = monotonic() + deadline_s

        async def one(number: int, semaphore: asyncio.Semaphore) -> bool:
            async with semaphore:
                if monotonic() > deadline:
                    errors["deadline"] = errors.get("deadline", 0) + 1
                    return False
                source = sources[number % len(sources)]
                started = monotonic()
                try:
                    factory, target = self.socket_for(url, number)
                    _, client = await ws_connect(factory, target, websocket_handshake_timeout=30,
                                                 local_addr=(source, 0))
                except Exception as exc:  # count every failure kind, keep going
                    name = type(exc).__name__
                    errors[name] = errors.get(name, 0) + 1
                    return False
                handshakes.append(monotonic() - started)
                self.clients.append(client)
                return True

        started = monotonic()
        pending, first_failed = list(range(count)), None
        for attempt in range(1 + retries):
            semaphore = asyncio.Semaphore(concurrency if attempt == 0 else 20)
            outcomes = await asyncio.gather(*(one(number, semaphore) for number in pending))
            pending = [number for number, ok in zip(pending, outcomes) if not ok]
            if first_failed is None:
                first_failed = len(pending)
            if not pending or monotonic() > deadline:
                break
        elapsed = monotonic() - started
        return {"requested": count, "connected": len(self.clients), "failed": len(pending),
                "failed_first_attempt": first_failed, "errors": errors,
                "seconds": round(elapsed, 3),
                "per_s": round(len(self.clients) / elapsed, 1) if elapsed else None,
                "handshake": summary_ms(handshakes)}

    async def wait(self, total: int, timeout_s: float, quiet: float) -> dict:
        deadline = monotonic() + timeout_s
        started = monotonic()
        while RECORDER.delivered < total and monotonic() < deadline:
            if monotonic() - max(RECORDER.last_frame_at, started) > quiet:
                break
            await asyncio.sleep(0.02)
        return {"delivered": RECORDER.delivered, "complete": RECORDER.delivered >= total,
                "waited_s": round(monotonic() - started, 3)}

    async def drain(self, quiet: float, timeout_s: float) -> dict:
        started = monotonic()
        while monotonic() - started < timeout_s:
            if monotonic() - max(RECORDER.last_frame_at, started) >= quiet:
                break
            await asyncio.sleep(0.05)
        return {"drained_s": round(monotonic() - started, 3)}

    def close(self) -> dict:
        if self.probe is not None:
            self.probe.task.cancel()
            self.probe = None
        closed = 0
        for client in self.clients:
            transport, client.transport = client.transport, None
            if transport is not None:
                transport.disconnect()
                closed += 1
        self.clients = []
        return {"closed": closed}

    async def handle(self, command: dict) -> dict:
        name = command.pop("cmd")
        if name == "connect":
            return await self.connect(**command)
        if name == "begin":
            RECORDER.begin(command["base"], command["count"])
            return {"ok": True}
        if name == "wait":
            return await self.wait(**command)
        if name == "report":
            return RECORDER.report(len(self.clients))
        if name == "drain":
            return await self.drain(**command)
        if name == "probe_start":
            self.clients[0].probe = self.probe = Probe(self.clients[0], command.get("interval", 0.02))
            return {"ok": True}
        if name == "probe_stop":
            probe, self.probe = self.probe, None
            probe.task.cancel()
            self.clients[0].probe = None
            return {"rtt": summary_ms(probe.rtts), "timeouts": probe.timeouts}
        if name == "close":
            return self.close()
        raise ValueError(f"unknown command {name!r}")


async def main() -> None:
    raise_fd_limit()
    load = LoadClient()
    await serve_commands(load.handle)
    load.close()


if __name__ == "__main__":
    uvloop.run(main())
