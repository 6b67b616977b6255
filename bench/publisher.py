"""The publisher: emits benchmark events at a set rate through a system's
worker-side path. Driven by JSON lines on stdin/stdout, like the load client.

    python -m bench.publisher lua REDIS_URL          # notify-server, Tornado baseline
    python -m bench.publisher group_send              # the Channels peer (its settings)

`lua` runs the emitter's own Lua script (`notify_server.worker.emitter.EMIT_SCRIPT`,
XADD to the capped history then PUBLISH with the new id, docs/protocol.md, section 6)
through a pipelined redis.asyncio client: the synchronous `Emitter` makes one
round trip per event and cannot pace a saturation run. The Redis commands and
the payload are the same as `Emitter.emit`'s.

`group_send` calls `channel_layer.group_send("tasks", {"type", "data"})`,
what a worker of the seed's stack does; the sends due in one tick are awaited
together, at most 32 at a time (redis-py 8's pool holds 100 connections and
raises, rather than waits, past that).

Command: `run {base, count, rate}` sends events `base .. base+count-1`, the
i-th due at i/rate seconds; every event's `data` starts with `seq` and `t`
(time.monotonic() just before it is sent). Replies with the achieved rate,
the worst lag behind schedule and the publisher's CPU seconds. With
`owner` (`lua` only) every event carries that top-level "owner" (token mode).
"""

import asyncio
import resource
import sys
import time
from typing import Optional

import orjson

from bench.procs import serve_commands
from notify_server.protocol.names import Keys

monotonic = time.monotonic
BATCH_MAX = 200


def event(seq: int, count: int, owner: Optional[str] = None) -> dict:
    message = {"type": "task_progress",
               "data": {"seq": seq, "t": monotonic(), "task_id": "bench-0000-task",
                        "avid": "BENCH-001", "status": "progress", "current": seq,
                        "total": count, "percent": 0.0, "message": "benchmark event"}}
    if owner is not None:
        message["owner"] = owner  # top level, beside type and data, as the emitter writes it
    return message


class LuaPath:
    def __init__(self, redis_url: str, prefix: str = "notify", maxlen: int = 10000):
        from redis.asyncio import Redis

        from notify_server.worker.emitter import EMIT_SCRIPT
        self.redis = Redis.from_url(redis_url, socket_timeout=None)
        self.script = self.redis.register_script(EMIT_SCRIPT)
        self.keys = [Keys(prefix).history_stream, Keys(prefix).events_channel]
        self.maxlen = maxlen

    async def send(self, seqs: range, count: int, owner: Optional[str] = None) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for seq in seqs:
            await self.script(keys=self.keys,
                              args=[orjson.dumps(event(seq, count, owner)), self.maxlen],
                              client=pipe)
        await pipe.execute()


class GroupSendPath:
    # redis-py 8's pools allow 100 connections, and past that raise instead of waiting.
    CONCURRENCY = 32

    def __init__(self):
        import django
        django.setup()
        from channels.layers import get_channel_layer
        self.layer = get_channel_layer()
        self.semaphore = asyncio.Semaphore(self.CONCURRENCY)

    async def send(self, seqs: range, count: int, owner: Optional[str] = None) -> None:
        if owner is not None:
            raise ValueError("the Channels peer has no owners")
        await asyncio.gather(*(self._send_one(seq, count) for seq in seqs))

    async def _send_one(self, seq: int, count: int) -> None:
        async with self.semaphore:
            await self.layer.group_send("tasks", event(seq, count))


async def run(path, base: int, count: int, rate: float, owner: Optional[str] = None) -> dict:
    cpu_before = cpu_seconds()
    started = monotonic()
    sent, worst_lag = 0, 0.0
    while sent < count:
        now = monotonic()
        due = min(count, int((now - started) * rate) + 1)
        if due <= sent:
            await asyncio.sleep(started + sent / rate - now)
            continue
        worst_lag = max(worst_lag, now - (started + sent / rate))
        batch = min(due - sent, BATCH_MAX)
        await path.send(range(base + sent, base + sent + batch), count, owner)
        sent += batch
    elapsed = monotonic() - started
    # A rate over `count` events spans (count - 1) intervals.
    achieved = (count - 1) / elapsed if count > 1 and elapsed > 0 else rate
    return {"sent": sent, "seconds": round(elapsed, 3), "target_rate": rate,
            "achieved_rate": round(achieved, 2), "worst_lag_ms": round(worst_lag * 1000, 2),
            "publisher_cpu_s": round(cpu_seconds() - cpu_before, 3)}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(argv) -> None:
    path = LuaPath(argv[1]) if argv[0] == "lua" else GroupSendPath()

    async def handle(command: dict) -> dict:
        name = command.pop("cmd")
        if name != "run":
            raise ValueError(f"unknown command {name!r}")
        return await run(path, **command)

    await serve_commands(handle)


if __name__ == "__main__":
    import uvloop
    uvloop.run(main(sys.argv[1:]))
