"""Reconnect delays: exponential backoff with full jitter (pure)."""

import random
from typing import Callable


class Backoff:
    """Delays for successive failed attempts; `reset` after a success.

    The n-th delay is uniform in [0, min(cap, base * 2**n)] ("full jitter"), so
    many servers restarting against one Redis do not retry in lockstep.
    """

    def __init__(self, base: float = 0.1, cap: float = 5.0,
                 uniform: Callable[[float, float], float] = random.uniform):
        self._base, self._cap, self._uniform = base, cap, uniform
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._base * (2 ** min(self._attempt, 32)))
        self._attempt += 1
        return self._uniform(0.0, ceiling)

    def reset(self) -> None:
        self._attempt = 0
