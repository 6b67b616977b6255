"""What runs in the inspect helper process: one poll of the workers and the queues.

An adapter. The poller (`poller.QueuePoller`, in the server process) starts
this process with `helper_process.helper_pool(start, ...)` and submits
`poll` to it; everything here but `InspectResult` and `inspect_time_limit`
runs only in that process. A poll makes Celery's inspect calls, then reads
the queues' depths from the broker, and hands back plain dicts
(`InspectResult`): `queue.replies` normalises them on the server's side.
"""

import itertools
import signal
from dataclasses import dataclass
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional, Tuple, Type

from celery import Celery
from kombu.transport import redis as redis_transport

from notify_server.celery_io.broker import broker_app, broker_errors
from notify_server.queue.replies import Replies, queue_names, remember_queues

# This process's inspect app and the errors its broker raises (set by `start`).
_inspect_app: Optional[Celery] = None
_broker_errors: Tuple[Type[BaseException], ...] = ()


class InspectTimeout(TimeoutError):
    """An inspect poll that overran its time limit (a hung broker connection)."""


@dataclass(frozen=True)
class InspectResult:
    """One poll's findings, as the helper process hands them back."""

    replies: Tuple[Replies, Replies, Replies]  # active, scheduled, reserved
    queues: FrozenSet[str]                      # every queue name known after this poll
    depths: Dict[str, Optional[int]]            # name -> messages waiting, None: unknown
    depth_error: Optional[str]                  # why the depths are unknown, if the read failed
    queues_asked: bool                          # every worker asked answered `active_queues`


def inspect_time_limit(timeout: float) -> float:
    """How long one poll (up to four calls of up to `timeout` each, then the
    depth read) may take in all."""
    return 4 * timeout + 10.0


def start(broker_url: str, master: Optional[str], transport_options: Mapping[str, Any]) -> None:
    """The process's initializer: a fail-fast inspect app (`broker.broker_app`)
    and the guard that interrupts a hung poll (SIGALRM)."""
    global _inspect_app, _broker_errors
    signal.signal(signal.SIGALRM, _overran)
    _inspect_app = broker_app(broker_url, master, transport_options, fail_fast=True)
    _broker_errors = broker_errors(broker_url)


def warm_up() -> None:
    """Does nothing: submitted to start the process before the first poll."""


def _overran(signum, frame) -> None:
    raise InspectTimeout("the inspect poll did not finish in time")


def poll(destination: Optional[List[str]], timeout: float,
         queues: FrozenSet[str], ask_queues: bool = False) -> InspectResult:
    """The three inspect calls, as plain dicts; with `ask_queues`,
    `active_queues` of the `destination` workers too when they all answered
    the three, whose names join `queues`; then the depth of every queue
    (`read_depths`).

    With `limit`, kombu stops after that many reply *messages*, a late reply
    to an earlier call included: a reply slower than `timeout` can cost the
    next call its answer. `poll_outcome.judge` treats that like any other
    part-answered poll. A broker error while reading the depths does not fail
    the poll: they are all None and `depth_error` says why. A poll that takes
    longer than `inspect_time_limit(timeout)` raises `InspectTimeout`.
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
