"""The queue poller: the server-side scheduler of Celery inspect polls.

An adapter, on the event-loop thread of the server process. Each poll runs
in the inspect helper process (`inspect_helper.poll`, started with
`helper_process.helper_pool`): the inspect calls, then the queues' depths.
Its plain-dict findings are judged (`poll_outcome.judge`), normalised
(`queue.replies.normalise`) and stored in the `QueueState` here.
"""

import asyncio
import logging
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, FrozenSet, Iterable, Optional

from notify_server.celery_io import inspect_helper
from notify_server.celery_io.broker import broker_errors
from notify_server.celery_io.helper_process import helper_pool
from notify_server.config import CeleryConfig
from notify_server.queue.poll_outcome import classify_failure, judge
from notify_server.queue.replies import normalise, queue_list, remember_queues
from notify_server.queue.state import QueueState

log = logging.getLogger(__name__)


class QueuePoller:
    """Polls `active`, `scheduled` and `reserved` and keeps `state` current,
    while enabled (only the process that leads polls: `lease.Lease`).

    At most one poll runs at a time; a tick or refresh that finds one in flight
    asks for another when it ends instead of starting a second. A poll that
    names the workers it already knows passes `limit`, so it ends as soon as
    they all answered; every `celery.discovery_interval` a poll waits the
    full timeout to find workers that joined. `on_result(data, stale_reason,
    broker_reachable)` is called on the event loop after every poll, failed
    or not (`data` None before any success); `on_poll(seconds, error or
    None)` too, for metrics. A poll in which a worker answered only
    some calls is repeated at once (see `poll_outcome.judge`). Failures are
    logged once per outage (a bug's traceback once per kind of bug) and never
    propagate; only broker errors count as the broker being unreachable. A
    poll that hangs fails after `inspect_helper.inspect_time_limit`; a helper
    process that dies is replaced for the next poll.

    Every poll also reads how many messages wait in each known queue
    (`inspect_helper.read_depths`): `celery.queues`, those that `enable`
    names and those the workers consume (`active_queues`, asked of the known
    workers in the first poll after each discovery, where it costs no extra
    timeout). A name once known stays for the life of the process, up to
    `queue.replies.MAX_QUEUES` names. `broker_master` names the Sentinel
    master of a `sentinel://` broker (`ServerConfig.broker_master`).
    All methods run on the event-loop thread.
    """

    def __init__(self, celery: CeleryConfig, broker_master: Optional[str], state: QueueState,
                 on_result: Callable[[Optional[dict], Optional[str], bool], None],
                 on_poll: Callable[[float, Optional[str]], None] = lambda duration, error: None):
        self._celery, self._broker_master = celery, broker_master
        self._queues = remember_queues(frozenset(), celery.queues)
        # Ask the known workers for `active_queues` in the next poll that names them.
        self._queues_due = True
        self._depth_error: Optional[str] = None
        self._state, self._on_result, self._on_poll = state, on_result, on_poll
        self._broker_errors = broker_errors(celery.broker_url)
        self._executor = self._new_executor()
        self._known: FrozenSet[str] = frozenset()
        self._partial: FrozenSet[str] = frozenset()
        self._last_discovery = float("-inf")
        self._in_flight: Optional[asyncio.Future] = None
        self._again = False
        self._stopped = False
        self._enabled = False
        self._refresh: Optional[asyncio.TimerHandle] = None
        self._ticker: Optional[asyncio.Task] = None
        self._failures = 0
        # From a poll that reached the broker to one that found it unreachable.
        self._broker_reachable = False

    def start(self) -> None:
        """Tick from now on; polls run only while enabled. The helper process
        starts now, on followers too: a process that takes over the lease
        polls at once instead of first spending seconds importing Celery."""
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        self._executor.submit(inspect_helper.warm_up)

    def enable(self, workers: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Start polling (this process now leads), at once. `workers` are those
        the last leader's snapshot named: the first poll asks them and ends
        as soon as they answered, instead of waiting the full timeout three
        times to discover them (a discovery poll follows at its interval).
        `queues` are the queue names it listed: they are known from the first
        poll on, as the workers' own are only from the next discovery poll."""
        if self._enabled:
            return
        self._enabled = True
        self._known, self._partial = frozenset(workers), frozenset()
        self._queues = remember_queues(self._queues, queues)
        self._queues_due = True
        self._last_discovery = asyncio.get_running_loop().time() if workers else float("-inf")
        self._poll_soon()

    def disable(self) -> None:
        """Stop polling at once (the lease was lost): a poll in flight is
        abandoned and its result never reported."""
        self._enabled = False
        self._again = False
        for handle in (self._refresh, self._in_flight):
            if handle is not None:
                handle.cancel()
        self._refresh = None

    async def stop(self) -> None:
        """Stop polling for good: no poll starts after this, the one in flight is cancelled."""
        self._stopped = True
        for handle in (self._ticker, self._refresh, self._in_flight):
            if handle is not None:
                handle.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._executor.stop)

    def _new_executor(self):
        return helper_pool(inspect_helper.start, self._celery.broker_url, self._broker_master,
                           dict(self._celery.broker_transport_options))

    def request_refresh(self) -> None:
        """Poll again soon (debounced), e.g. because a task started or ended."""
        if self._refresh is None:
            loop = asyncio.get_running_loop()
            self._refresh = loop.call_later(self._celery.refresh_delay, self._refresh_now)

    def _refresh_now(self) -> None:
        self._refresh = None
        self._poll_soon()

    async def _tick_forever(self) -> None:
        while True:
            self._poll_soon()
            await asyncio.sleep(self._celery.poll_interval)

    def _poll_soon(self) -> None:
        if self._stopped or not self._enabled:
            return
        if self._in_flight is not None:
            self._again = True
            return
        self._in_flight = asyncio.ensure_future(self._poll())
        self._in_flight.add_done_callback(self._poll_done)

    def _poll_done(self, _future: asyncio.Future) -> None:
        self._in_flight = None
        if self._again:
            self._again = False
            self._poll_soon()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        discovering = (not self._known or loop.time() - self._last_discovery
                       >= self._celery.discovery_interval)
        destination = None if discovering else sorted(self._known)
        started = time.monotonic()
        try:
            result = await loop.run_in_executor(self._executor, inspect_helper.poll, destination,
                                                self._celery.inspect_timeout, self._queues,
                                                self._queues_due and destination is not None)
        except BrokenProcessPool:
            self._executor = self._new_executor()
            self._failed("the inspect process died; restarted it", started)
            return
        except Exception as exc:
            failure = classify_failure(exc, self._broker_errors)
            if failure.broker_down:
                self._broker_reachable = False
            self._failed(failure.reason, started, bug=None if failure.broker_down else exc)
            return
        self._broker_reachable = True
        self._queues = remember_queues(self._queues, result.queues)
        if result.queues_asked:
            self._queues_due = False
        self._note_depths(result.depth_error)
        try:
            verdict = judge(result.replies, self._partial)
            snapshot = (normalise(*result.replies, result.depths,
                                  subject_arg=self._celery.subject_arg,
                                  owner_arg=self._celery.owner_arg)
                        if verdict.publish else None)
        except Exception as exc:  # in our own pure code: never a broker error
            self._failed(classify_failure(exc, ()).reason, started, bug=exc)
            return
        self._known, self._partial = verdict.ask, verdict.partial
        if verdict.stale_reason is not None:
            if result.depth_error is None:
                self._state.set_queues(queue_list(result.depths))
            self._failed(verdict.stale_reason, started)
            return
        if discovering:
            self._last_discovery = loop.time()
            self._queues_due = True  # the workers it found: which queues they consume
        self._on_poll(time.monotonic() - started, None)
        if verdict.poll_again:
            log.debug("worker(s) %s answered only part of the inspect poll; polling again",
                      ", ".join(sorted(verdict.partial)))
            self._again = True
            return
        if self._failures:
            log.info("inspect poll recovered after %d failure(s)", self._failures)
        self._failures = 0
        self._state.update(snapshot, time.time())
        self._report()

    def _note_depths(self, error: Optional[str]) -> None:
        """Log a failed depth read once, until a read succeeds again."""
        if error is not None and self._depth_error is None:
            log.warning("queue depths unknown (waiting: null) until a read succeeds: %s", error)
        elif error is None and self._depth_error is not None:
            log.info("queue depths readable again")
        self._depth_error = error

    def _report(self) -> None:
        if self._enabled:
            self._on_result(self._state.data(), self._state.stale_reason,
                            self._broker_reachable)

    def _failed(self, reason: str, started: float, bug: Optional[BaseException] = None) -> None:
        self._on_poll(time.monotonic() - started, reason)
        if bug is not None:
            if self._failures == 0 or reason != self._state.stale_reason:
                # The chain includes the helper process's traceback (`__cause__`).
                log.error("inspect poll failed: a bug in notify-server, please report it; "
                          "the queue snapshot is stale until a poll succeeds", exc_info=bug)
        elif self._failures == 0:
            log.warning("queue snapshot is stale: %s", reason)
        self._failures += 1
        self._state.mark_failed(reason)
        self._report()
