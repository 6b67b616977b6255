"""The queue snapshot shared through Redis: the leader writes each poll
result, every process (the leader too) takes what the relay brings back.

So all processes serve the same `queue_status`. An adapter around
redis.asyncio; the format is `queue.snapshot`'s, the state `QueueState`'s.
Every method runs on the event-loop thread.
"""

import asyncio
import logging
import time
from typing import Callable, Optional

from redis.asyncio import Redis
from redis.exceptions import RedisError

from notify_server.protocol.names import Keys
from notify_server.queue.snapshot import decode_snapshot, encode_snapshot
from notify_server.queue.state import QueueState

log = logging.getLogger(__name__)

# The leader's poll result: stored and announced in one step, and only while
# the lease (KEYS[3]) is still ours (ARGV[2]): a deposed leader's late write is dropped.
SNAPSHOT_SCRIPT = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""

# Without a snapshot from the leader for this many poll intervals, the lists are stale.
SNAPSHOT_PATIENCE = 3


class SharedSnapshot:
    """Writes this process's poll results while it leads (`publish`) and
    adopts every snapshot the relay delivers into `state` (`received`),
    calling `on_change()` when clients need a new `queue_status`.

    `watch()` marks the lists stale when no leader shared one for
    SNAPSHOT_PATIENCE poll intervals plus the lease's TTL.
    """

    def __init__(self, redis: Redis, keys: Keys, instance: str, state: QueueState,
                 poll_interval: float, leader_ttl: float, on_change: Callable[[], None]):
        self._keys, self._instance, self._state = keys, instance, state
        self._on_change = on_change
        self._script = redis.register_script(SNAPSHOT_SCRIPT)
        self._poll_interval = poll_interval
        self._patience = SNAPSHOT_PATIENCE * poll_interval + leader_ttl
        self._latest: Optional[bytes] = None   # waiting to be written
        self._writer: Optional[asyncio.Task] = None
        self._seen = time.monotonic()          # when the relay last brought one live
        self.broker_up = False                 # the leader reached the broker

    def publish(self, data: Optional[dict], stale_reason: Optional[str],
                broker_up: bool) -> None:
        """A poll of this process ended: write it for every process, in the
        background. Only the latest result is written; writes never overtake
        each other, and a process that lost the lease writes nothing."""
        self._latest = encode_snapshot(data, stale_reason, broker_up, self._instance)
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        while self._latest is not None:
            payload, self._latest = self._latest, None
            try:
                await self._script(keys=[self._keys.queue_key, self._keys.queue_channel,
                                         self._keys.leader_key],
                                   args=[payload, self._instance])
            except (RedisError, OSError) as exc:
                log.warning("could not share the queue snapshot (%s)", exc)

    def received(self, payload: bytes, live: bool) -> None:
        """A snapshot from the leader (maybe this process) arrived: `live`
        from the channel, else read from the key (maybe old: it does not
        count as a sign of a living leader)."""
        try:
            shared = decode_snapshot(payload)
        except ValueError as exc:
            log.warning("ignoring a malformed queue snapshot: %s", exc)
            return
        stale_reason = shared["stale_reason"]
        if live:
            self._seen = time.monotonic()
            self.broker_up = shared["broker"]
        elif shared["data"] is not None and stale_reason is None:
            age = time.time() - (shared["data"].get("updated_at") or 0.0)
            if age > self._patience:
                stale_reason = f"the last queue snapshot is {age:.0f} s old; no poller leader"
        if self._state.adopt(shared["data"], stale_reason):
            self._on_change()

    async def watch(self) -> None:
        """Until cancelled: mark the lists stale when no leader has shared a
        snapshot for a while."""
        while True:
            await asyncio.sleep(self._poll_interval)
            silent = time.monotonic() - self._seen
            if silent > self._patience:
                self.broker_up = False
                if self._state.mark_failed(f"no queue snapshot from the poller leader for "
                                           f"{silent:.0f} s"):
                    self._on_change()
