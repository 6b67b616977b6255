"""One leader among the server processes that share a Redis: a renewed lease.

An adapter (redis.asyncio). The lease is one Redis key holding the holder's
identity, set with `SET NX PX` and extended by its holder with a
compare-and-extend script, so only the holder can renew or release it.
"""

import asyncio
import logging
import time
from typing import Callable, Optional

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

# Take the lease if free, or extend it if it is already ours: 1 when we hold it.
ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return 1
end
if not holder then
    redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
    return 1
end
return 0
"""

# Delete the lease only if it is still ours.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('DEL', KEYS[1])
end
return 0
"""


class Lease:
    """Holds, renews and gives up the lease `key` for `identity`.

    `run` tries every `ttl / 3` seconds: to take the lease while another
    holds none, to extend it while we hold it. We count as the holder only
    until `ttl` after the last confirmed renewal, minus a third for safety:
    a Redis error, a paused process or a renewal that finds another holder
    ends our leadership at once, before the key can expire for the others.
    `on_change(leading, holder)` is called on every change of who holds it
    (as far as this process can tell; `holder` may be None when unknown).
    """

    def __init__(self, redis: Redis, key: str, identity: str, ttl: float,
                 on_change: Callable[[bool, Optional[str]], None],
                 clock: Callable[[], float] = time.monotonic):
        self._redis, self._key, self.identity, self.ttl = redis, key, identity, ttl
        self._on_change, self._clock = on_change, clock
        self._acquire = redis.register_script(ACQUIRE)
        self._release = redis.register_script(RELEASE)
        self.leading = False
        self.holder: Optional[str] = None
        self._valid_until = 0.0

    async def run(self) -> None:
        """Try, renew and watch the lease until cancelled; never raises."""
        while True:
            await self.attempt()
            await asyncio.sleep(self.ttl / 3)

    async def attempt(self) -> None:
        """One round: take or extend the lease, or learn who holds it."""
        if self.leading and self._clock() >= self._valid_until:
            # The last renewal is too old (a paused process, a slow Redis):
            # another process may hold the key by now.
            self._set(False, None, "the lease ran out before it could be renewed")
        started = self._clock()
        try:
            held = await self._acquire(keys=[self._key],
                                       args=[self.identity, int(self.ttl * 1000)])
            holder = self.identity if held else await self._redis.get(self._key)
        except (RedisError, OSError) as exc:
            if self.leading:
                self._set(False, None, f"Redis did not confirm the lease ({exc})")
            return
        if isinstance(holder, bytes):
            holder = holder.decode(errors="replace")
        if held:
            # Counted from before the request: the key's own expiry started later.
            self._valid_until = started + self.ttl * 2 / 3
        self._set(bool(held), holder, "another process holds the lease" if not held else "")

    def holds(self) -> bool:
        """Whether this process holds the lease now, by its own clock: `leading`,
        and its last renewal still valid (a process that was paused knows here
        that it lost the lease, before its next round tells it so)."""
        return self.leading and self._clock() < self._valid_until

    async def release(self) -> None:
        """Give the lease up now (shutdown), so another process takes over at once."""
        was_leading, self.leading = self.leading, False
        if not was_leading:
            return
        try:
            await self._release(keys=[self._key], args=[self.identity])
        except (RedisError, OSError) as exc:
            log.warning("could not release the poller lease (%s); it expires in %.0f s",
                        exc, self.ttl)

    def _set(self, leading: bool, holder: Optional[str], why: str) -> None:
        changed = leading != self.leading or holder != self.holder
        was_leading = self.leading
        self.leading, self.holder = leading, holder
        if not changed:
            return
        if leading:
            log.info("this process (%s) now leads: it polls Celery inspect", self.identity)
        elif was_leading:
            log.warning("this process (%s) stopped leading: %s", self.identity, why)
        elif holder is not None:
            log.info("poller leader is %s", holder)
        self._on_change(leading, holder)
