"""The queue poller: Celery inspect, off the event loop, on one periodic callback.

An adapter: Celery calls run in a single worker thread; their replies are
normalised by `queue_status` and stored in the shared `QueueState` on the
event-loop thread.
"""

import asyncio
import concurrent.futures
import logging
import time
from typing import Callable, FrozenSet, Optional, Tuple

from celery import Celery

from .queue_status import QueueState, Replies, normalise

log = logging.getLogger(__name__)


def make_inspect_app(broker_url: str) -> Celery:
    """A Celery app used only to inspect workers: fails fast when the broker is down."""
    app = Celery("notify-server-inspect", broker=broker_url, set_as_current=False)
    app.conf.update(
        broker_connection_timeout=2.0,
        broker_connection_retry=False,
        broker_connection_max_retries=1,
        broker_transport_options={"socket_timeout": 3.0, "socket_connect_timeout": 2.0,
                                  "max_retries": 1},
    )
    return app


class QueuePoller:
    """Polls `active`, `scheduled` and `reserved` and keeps `state` current.

    At most one poll runs at a time; a tick or refresh that finds one in flight
    asks for another when it ends instead of starting a second. A poll that
    names the workers it already knows passes `limit`, so it ends as soon as
    they all answered; every `discovery_interval` a poll waits the full
    timeout to find workers that joined. `on_change(data)` is called on the
    event loop when the snapshot or its staleness changed; `on_poll(seconds,
    error or None)` after every poll. Failures are logged once per outage and
    never propagate.
    """

    def __init__(self, app: Celery, state: QueueState, on_change: Callable[[dict], None],
                 *, interval: float, timeout: float, discovery_interval: float,
                 refresh_delay: float, subject_arg: str,
                 on_poll: Callable[[float, Optional[str]], None] = lambda duration, error: None):
        self._app, self._state, self._on_change, self._on_poll = app, state, on_change, on_poll
        self._interval, self._timeout = interval, timeout
        self._discovery_interval, self._refresh_delay = discovery_interval, refresh_delay
        self._subject_arg = subject_arg
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="inspect")
        self._known: FrozenSet[str] = frozenset()
        self._last_discovery = float("-inf")
        self._in_flight: Optional[asyncio.Future] = None
        self._again = False
        self._refresh: Optional[asyncio.TimerHandle] = None
        self._ticker: Optional[asyncio.Task] = None
        self.failures = 0
        # None until the first poll ends; False while the broker cannot be reached.
        self.broker_reachable: Optional[bool] = None

    def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def stop(self) -> None:
        for handle in (self._ticker, self._refresh):
            if handle is not None:
                handle.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)

    def request_refresh(self) -> None:
        """Poll again soon (debounced), e.g. because a task started or ended."""
        if self._refresh is None:
            loop = asyncio.get_running_loop()
            self._refresh = loop.call_later(self._refresh_delay, self._refresh_now)

    def _refresh_now(self) -> None:
        self._refresh = None
        self.poll_soon()

    async def _tick_forever(self) -> None:
        while True:
            self.poll_soon()
            await asyncio.sleep(self._interval)

    def poll_soon(self) -> None:
        if self._in_flight is not None:
            self._again = True
            return
        self._in_flight = asyncio.ensure_future(self._poll())
        self._in_flight.add_done_callback(self._poll_done)

    def _poll_done(self, _future: asyncio.Future) -> None:
        self._in_flight = None
        if self._again:
            self._again = False
            self.poll_soon()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        discovering = not self._known or loop.time() - self._last_discovery >= self._discovery_interval
        destination = None if discovering else sorted(self._known)
        started = time.monotonic()
        try:
            replies = await loop.run_in_executor(self._executor, self._inspect, destination)
        except Exception as exc:  # any Celery/kombu failure: the broker is unreachable
            self.broker_reachable = False
            self._failed(f"broker unreachable: {type(exc).__name__}: {exc}", started)
            return
        self.broker_reachable = True
        snapshot = normalise(*replies, subject_arg=self._subject_arg)
        responders = frozenset(snapshot["workers"])
        if not responders:
            self._known = frozenset()
            self._failed("no Celery worker answered the inspect poll", started)
            return
        self._known = responders
        if discovering:
            self._last_discovery = loop.time()
        if self.failures:
            log.info("inspect poll recovered after %d failure(s)", self.failures)
        self.failures = 0
        self._on_poll(time.monotonic() - started, None)
        if self._state.update(snapshot, time.time()):
            self._on_change(self._state.data())

    def _inspect(self, destination) -> Tuple[Replies, Replies, Replies]:
        limit = len(destination) if destination else None
        inspect = self._app.control.inspect(timeout=self._timeout, destination=destination,
                                            limit=limit)
        return inspect.active(), inspect.scheduled(), inspect.reserved()

    def _failed(self, reason: str, started: float) -> None:
        self._on_poll(time.monotonic() - started, reason)
        if self.failures == 0:
            log.warning("queue snapshot is stale: %s", reason)
        self.failures += 1
        if self._state.mark_failed(reason):
            self._on_change(self._state.data())
