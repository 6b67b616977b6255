"""How much one client may take: sockets in all and per address, actions per second.

Pure: time is handed in, nothing here reads a clock or a socket.
"""

import collections
from typing import Optional


class ConnectionCounter:
    """Open sockets, in all and per client address, against two limits
    (a limit of 0 means none)."""

    # What `refusal` returns: the HTTP status and the message the client is told.
    TOO_MANY = 503
    TOO_MANY_FROM_ADDRESS = 429

    def __init__(self, max_total: int, max_per_address: int):
        self.max_total, self.max_per_address = max_total, max_per_address
        self.total = 0
        self._by_address: "collections.Counter[str]" = collections.Counter()

    def refusal(self, address: str) -> Optional[tuple]:
        """(status, message) when one more socket from `address` is over a
        limit, else None."""
        if self.max_total and self.total >= self.max_total:
            return self.TOO_MANY, f"server is at its limit of {self.max_total} connections"
        if self.max_per_address and self._by_address[address] >= self.max_per_address:
            return (self.TOO_MANY_FROM_ADDRESS,
                    f"at most {self.max_per_address} connections per client address")
        return None

    def add(self, address: str) -> None:
        self.total += 1
        self._by_address[address] += 1

    def remove(self, address: str) -> None:
        self.total -= 1
        self._by_address[address] -= 1
        if self._by_address[address] <= 0:
            del self._by_address[address]


class ActionBucket:
    """A token bucket for one socket's actions: `rate` per second, up to
    `burst` at once.

    `take(now)` says whether an action may run. `flooding` turns true once
    `burst` actions in a row were refused: the client ignores `rate_limited`
    replies and its socket should be closed.
    """

    __slots__ = ("rate", "burst", "_tokens", "_at", "_refused")

    def __init__(self, rate: float, burst: int, now: float):
        self.rate, self.burst = rate, burst
        self._tokens, self._at = float(burst), now
        self._refused = 0

    def take(self, now: float) -> bool:
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            self._refused = 0
            return True
        self._refused += 1
        return False

    @property
    def flooding(self) -> bool:
        return self._refused >= self.burst
