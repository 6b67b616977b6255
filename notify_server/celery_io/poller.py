"""The queue poller: Celery inspect, off the event loop, on one periodic callback.

An adapter. Celery's inspect calls run in one helper *process*, not a thread:
kombu and Celery do enough pure-Python work per poll that a thread would hold
the GIL for milliseconds at a time and delay every broadcast on the event
loop. The same process reads the queues' depths from the broker after the
inspect calls. The replies come back as plain dicts, are normalised by
`queue_status` and stored in the shared `QueueState` on the event-loop thread.
"""

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import (Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple,
                    Type)

from celery import Celery
from kombu import Connection
from kombu.exceptions import OperationalError
from kombu.transport import redis as redis_transport

from notify_server.queue.poll_outcome import classify_failure, judge
from notify_server.queue.replies import Replies, normalise, queue_list, queue_names, remember_queues
from notify_server.queue.state import QueueState

log = logging.getLogger(__name__)

# The inspect app of the helper process and the errors its broker raises (set by
# `_start_inspect_process` in that process only; the server process never touches them).
_inspect_app: Optional[Celery] = None
_broker_errors: Tuple[Type[BaseException], ...] = ()

# Broker transport options that keep a poll from hanging: they win over the
# user's, because `inspect_time_limit` counts on them.
FAIL_FAST_OPTIONS = {"socket_timeout": 3.0, "socket_connect_timeout": 2.0, "max_retries": 1}


def make_inspect_app(broker_url: str, master: Optional[str] = None,
                     transport_options: Optional[Mapping[str, Any]] = None) -> Celery:
    """A Celery app used only to inspect workers and read queue depths: fails
    fast when the broker is down.

    `transport_options` are the workers' own `broker_transport_options`, so
    that this app names the broker's keys as they do (`global_keyprefix`,
    `sep`, `priority_steps`); `FAIL_FAST_OPTIONS` replace theirs. `master`
    names the Redis Sentinel master of a `sentinel://` broker when the
    options name none (`master_name`).
    """
    app = Celery("notify-server-inspect", broker=broker_url, set_as_current=False)
    options = {**({"master_name": master} if master else {}), **(transport_options or {}),
               **FAIL_FAST_OPTIONS}
    app.conf.update(
        broker_connection_timeout=2.0,
        broker_connection_retry=False,
        broker_connection_max_retries=1,
        broker_transport_options=options,
    )
    return app


class InspectTimeout(TimeoutError):
    """An inspect poll that overran its time limit (a hung broker connection)."""


def _overran(signum, frame) -> None:
    raise InspectTimeout("the inspect poll did not finish in time")


def _start_inspect_process(broker_url: str, master: Optional[str],
                           transport_options: Mapping[str, Any]) -> None:
    global _inspect_app, _broker_errors
    # Ctrl-C reaches the whole process group: the server shuts this process down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, _overran)
    threading.Thread(target=exit_with_parent, args=(os.getppid(),), daemon=True).start()
    _inspect_app = make_inspect_app(broker_url, master, transport_options)
    _broker_errors = broker_errors(broker_url)


def exit_with_parent(parent: int) -> None:
    """Never outlive the server, even one killed with SIGKILL."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def broker_errors(broker_url: str) -> Tuple[Type[BaseException], ...]:
    """What the inspect calls raise when the broker cannot be reached.

    kombu's `OperationalError` (a failed connect), `OSError` (sockets,
    timeouts) and the transport's own connection and channel errors (redis-py's
    `ConnectionError`, `TimeoutError`, `ResponseError`, ... for Redis), minus
    `KeyError`, which kombu's Redis transport lists for an old redis-py quirk
    and which here is far likelier a bug. Builds no connection. A transport that cannot be
    loaded (unknown scheme, missing library) is logged here, once: every
    poll will then fail, with that error in its traceback.
    """
    try:
        with Connection(broker_url) as connection:
            # Channel errors too: a broker that answers READONLY (a replica
            # after a failover), OOM or MISCONF is a broker fault, not our bug.
            transport_errors = connection.connection_errors + connection.channel_errors
    except (KeyError, ImportError) as exc:
        log.error("cannot load the Celery broker transport: %s: %s", type(exc).__name__, exc)
        transport_errors = ()
    errors = (OperationalError, OSError,
              *(error for error in transport_errors if not issubclass(error, LookupError)))
    return tuple(dict.fromkeys(errors))


def read_depths(app: Celery, queues: Iterable[str]) -> Dict[str, Optional[int]]:
    """How many messages wait in the broker in each of `queues`, taken by no worker yet.

    On Redis: the lengths of each queue's list and of its priority lists,
    named by kombu's own channel as its `_size` names them (`sep`,
    `priority_steps` and `global_keyprefix` from the app's transport
    options), all read in one pipeline: one round trip, one instant. None for
    a queue whose key holds something other than a list, and for every queue
    on any other broker (not read). Raises the broker's errors.
    """
    names = sorted(queues)
    with app.connection_or_acquire() as connection:
        if not names or not isinstance(connection.transport, redis_transport.Transport):
            return dict.fromkeys(names)
        channel = connection.default_channel
        keys = [[channel._q_for_pri(name, step) for step in channel.priority_steps]
                for name in names]
        with channel.conn_or_acquire() as client, client.pipeline() as pipe:
            for key in itertools.chain.from_iterable(keys):
                pipe.llen(key)
            lengths = iter(pipe.execute(raise_on_error=False))
    return {name: _total([next(lengths) for _ in queue_keys])
            for name, queue_keys in zip(names, keys)}


def _total(lengths: List[Any]) -> Optional[int]:
    # An error in place of a length: that key is not a list (not a kombu queue).
    return sum(lengths) if all(isinstance(length, int) for length in lengths) else None


@dataclass(frozen=True)
class InspectResult:
    """One poll's findings, as the helper process hands them back."""

    replies: Tuple[Replies, Replies, Replies]  # active, scheduled, reserved
    queues: FrozenSet[str]                      # every queue name known after this poll
    depths: Dict[str, Optional[int]]            # name -> messages waiting, None: unknown
    depth_error: Optional[str]                  # why the depths are unknown, if the read failed
    queues_asked: bool                          # every worker asked answered `active_queues`


def _inspect(destination: Optional[List[str]], timeout: float,
             queues: FrozenSet[str], ask_queues: bool = False) -> InspectResult:
    """Runs in the helper process: the three inspect calls, as plain dicts;
    with `ask_queues`, `active_queues` of the `destination` workers too when
    they all answered the three, whose names join `queues`; then the depth of
    every queue (`read_depths`).

    With `limit`, kombu stops after that many reply *messages*, a late reply
    to an earlier call included: a reply slower than `timeout` can cost the
    next call its answer. `judge` treats that like any other part-answered
    poll. A broker error while reading the depths does not fail the poll:
    they are all None and `depth_error` says why.
    """
    limit = len(destination) if destination else None
    inspect = _inspect_app.control.inspect(timeout=timeout, destination=destination, limit=limit)
    # A connection that hangs would stop every later poll: the calls, the depth
    # read and a reconnect get a generous limit, after which the poll fails (a broker fault).
    signal.setitimer(signal.ITIMER_REAL, inspect_time_limit(timeout))
    try:
        replies = inspect.active(), inspect.scheduled(), inspect.reserved()
        asked = False
        if ask_queues and destination and all(len(reply or {}) >= len(destination)
                                              for reply in replies):
            # Only of known workers that all just answered, with `limit`: it
            # ends as soon as they answer, where a discovery poll (or a worker
            # gone silent) would make the poll wait a whole timeout more.
            reply = inspect.active_queues()
            queues = remember_queues(queues, queue_names(reply))
            asked = len(reply or {}) >= len(destination)
        try:
            depths, depth_error = read_depths(_inspect_app, queues), None
        except _broker_errors as exc:
            depths, depth_error = dict.fromkeys(queues), f"{type(exc).__name__}: {exc}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return InspectResult(replies, queues, depths, depth_error, asked)


def _started() -> None:
    """Runs in the helper process: nothing, once its initializer has run."""


def inspect_time_limit(timeout: float) -> float:
    """How long one poll (up to four calls of up to `timeout` each, then the
    depth read) may take in all."""
    return 4 * timeout + 10.0


class QueuePoller:
    """Polls `active`, `scheduled` and `reserved` and keeps `state` current,
    while `enabled` (only the process that leads polls: `lease.Lease`).

    At most one poll runs at a time; a tick or refresh that finds one in flight
    asks for another when it ends instead of starting a second. A poll that
    names the workers it already knows passes `limit`, so it ends as soon as
    they all answered; every `discovery_interval` a poll waits the full
    timeout to find workers that joined. `on_result(data, stale_reason,
    broker_reachable)` is called on the event loop after every poll, failed
    or not (`data` None before any success); `on_poll(seconds, error or
    None)` too, for metrics. A poll in which a worker answered only
    some calls is repeated at once (see `poll_outcome.judge`). Failures are
    logged once per outage (a bug's traceback once per kind of bug) and never
    propagate; only broker errors count as the broker being unreachable.

    Every poll also reads how many messages wait in each known queue
    (`read_depths`): the `queues` given, those that `enable` names and those
    the workers consume (`active_queues`, asked of the known workers in the
    first poll after each discovery, where it costs no extra timeout). A name
    once known stays for the life of the process, up to
    `queue_status.MAX_QUEUES` names. `broker_transport_options` are the
    workers' Celery `broker_transport_options` (see `make_inspect_app`).
    """

    def __init__(self, broker_url: str, state: QueueState,
                 on_result: Callable[[Optional[dict], Optional[str], bool], None],
                 *, interval: float, timeout: float, discovery_interval: float,
                 refresh_delay: float, subject_arg: str, owner_arg: str = "user_id",
                 broker_master: Optional[str] = None, queues: Iterable[str] = (),
                 broker_transport_options: Optional[Mapping[str, Any]] = None,
                 on_poll: Callable[[float, Optional[str]], None] = lambda duration, error: None):
        self._broker_url, self._broker_master = broker_url, broker_master
        self._transport_options = dict(broker_transport_options or {})
        self._queues = remember_queues(frozenset(), queues)
        # Ask the known workers for `active_queues` in the next poll that names them.
        self._queues_due = True
        self._depth_error: Optional[str] = None
        self._state, self._on_result, self._on_poll = state, on_result, on_poll
        self._interval, self._timeout = interval, timeout
        self._discovery_interval, self._refresh_delay = discovery_interval, refresh_delay
        self._subject_arg, self._owner_arg = subject_arg, owner_arg
        self._broker_errors = broker_errors(broker_url)
        self._executor = self._new_executor()
        self._known: FrozenSet[str] = frozenset()
        self._partial: FrozenSet[str] = frozenset()
        self._last_discovery = float("-inf")
        self._in_flight: Optional[asyncio.Future] = None
        self._again = False
        self._stopped = False
        self.enabled = False
        self._refresh: Optional[asyncio.TimerHandle] = None
        self._ticker: Optional[asyncio.Task] = None
        self.failures = 0
        # None until the first poll ends; False while the broker cannot be reached.
        self.broker_reachable: Optional[bool] = None

    def start(self) -> None:
        """Tick from now on; polls run only while `enabled`. The helper process
        starts now, on followers too: a process that takes over the lease
        polls at once instead of first spending seconds importing Celery."""
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())
        self._executor.submit(_started)

    def enable(self, workers: Iterable[str] = (), queues: Iterable[str] = ()) -> None:
        """Start polling (this process now leads), at once. `workers` are those
        the last leader's snapshot named: the first poll asks them and ends
        as soon as they answered, instead of waiting the full timeout three
        times to discover them (a discovery poll follows at its interval).
        `queues` are the queue names it listed: they are known from the first
        poll on, as the workers' own are only from the next discovery poll."""
        if self.enabled:
            return
        self.enabled = True
        self._known, self._partial = frozenset(workers), frozenset()
        self._queues = remember_queues(self._queues, queues)
        self._queues_due = True
        self._last_discovery = asyncio.get_running_loop().time() if workers else float("-inf")
        self.poll_soon()

    def disable(self) -> None:
        """Stop polling at once (the lease was lost): a poll in flight is
        abandoned and its result never reported."""
        self.enabled = False
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
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _new_executor(self) -> concurrent.futures.ProcessPoolExecutor:
        # spawn, not fork: the server process has threads and an event loop.
        return concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_inspect_process,
            initargs=(self._broker_url, self._broker_master, self._transport_options))

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
        if self._stopped or not self.enabled:
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
            self.poll_soon()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        discovering = not self._known or loop.time() - self._last_discovery >= self._discovery_interval
        destination = None if discovering else sorted(self._known)
        started = time.monotonic()
        try:
            result = await loop.run_in_executor(self._executor, _inspect, destination,
                                                self._timeout, self._queues,
                                                self._queues_due and destination is not None)
        except BrokenProcessPool:
            self._executor = self._new_executor()
            self._failed("the inspect process died; restarted it", started)
            return
        except Exception as exc:
            failure = classify_failure(exc, self._broker_errors)
            if failure.broker_down:
                self.broker_reachable = False
            self._failed(failure.reason, started, bug=None if failure.broker_down else exc)
            return
        self.broker_reachable = True
        self._queues = remember_queues(self._queues, result.queues)
        if result.queues_asked:
            self._queues_due = False
        self._note_depths(result.depth_error)
        try:
            verdict = judge(result.replies, self._partial)
            snapshot = (normalise(*result.replies, result.depths,
                                  subject_arg=self._subject_arg, owner_arg=self._owner_arg)
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
        if self.failures:
            log.info("inspect poll recovered after %d failure(s)", self.failures)
        self.failures = 0
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
        if self.enabled:
            self._on_result(self._state.data(), self._state.stale_reason,
                            self.broker_reachable is True)

    def _failed(self, reason: str, started: float, bug: Optional[BaseException] = None) -> None:
        self._on_poll(time.monotonic() - started, reason)
        if bug is not None:
            if self.failures == 0 or reason != self._state.stale_reason:
                # The chain includes the helper process's traceback (`__cause__`).
                log.error("inspect poll failed: a bug in notify-server, please report it; "
                          "the queue snapshot is stale until a poll succeeds", exc_info=bug)
        elif self.failures == 0:
            log.warning("queue snapshot is stale: %s", reason)
        self.failures += 1
        self._state.mark_failed(reason)
        self._report()
