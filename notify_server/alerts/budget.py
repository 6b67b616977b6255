"""How many posts a webhook gets: a token bucket, `now` handed in (pure)."""

WINDOW = 60.0  # seconds: the budget is per minute


class Budget:
    """At most `per_minute` posts at once, and `per_minute` more for each
    minute after: a bucket of `per_minute` tokens, refilled continuously
    (so no minute-long window ever sees more than twice `per_minute`).
    `now` is any monotonic clock in seconds."""

    def __init__(self, per_minute: int, now: float):
        self._capacity = float(per_minute)
        self._rate = per_minute / WINDOW
        self._tokens, self._at = self._capacity, now

    def available(self, now: float) -> bool:
        """Whether a post may go out now."""
        return self._refill(now) >= 1.0

    def spend(self, now: float) -> None:
        """One post went out (it may leave the bucket below zero: never refused)."""
        self._tokens = self._refill(now) - 1.0

    def wait(self, now: float) -> float:
        """Seconds until `available` (0 when it is already)."""
        return max(0.0, (1.0 - self._refill(now)) / self._rate)

    def _refill(self, now: float) -> float:
        self._tokens = min(self._capacity, self._tokens + (now - self._at) * self._rate)
        self._at = now
        return self._tokens
