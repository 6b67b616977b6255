"""A worker-side event source at a steady rate, on a thread of the test."""

import threading
import time
from typing import Optional

from notify_server.worker.emitter import Emitter
from tests.support.progress_events import progress


class Publisher:
    """Emits `progress(tag, 0)`, `(tag, 1)`, ... through an `Emitter`
    (XADD and PUBLISH with an id, as a Celery worker does) at `rate` per
    second, on its own thread, until `stop` or `limit` events.

    `emitted` is how many `emit` calls returned. `stop` returns once the
    thread has ended and the emitter has written them all: that many events
    are then in the history.
    """

    def __init__(self, redis_url: str, tag: str, rate: float, limit: int):
        self.tag, self._rate, self._limit = tag, rate, limit
        self._emitter = Emitter(redis_url)
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.emitted = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"publisher-{self.tag}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> int:
        """Stop emitting; returns how many events were emitted."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        assert self._emitter.flush(10), f"{self._emitter.pending} events never reached Redis"
        return self.emitted

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        started = time.monotonic()
        for number in range(self._limit):
            if self._stopping.is_set():
                return
            self._emitter.emit(progress(self.tag, number))
            self.emitted = number + 1
            # On a schedule, not a fixed sleep: a slow emit does not lower the rate.
            delay = started + (number + 1) / self._rate - time.monotonic()
            if delay > 0 and self._stopping.wait(delay):
                return
