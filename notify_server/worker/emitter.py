"""Worker side: write task events to Redis (docs/protocol.md section 6).

Synchronous (redis-py), because Celery task bodies and signal handlers are.
"""

import atexit
import collections
import hashlib
import itertools
import logging
import math
import os
import threading
import time
from typing import Any, Deque, Iterable, List, Mapping, Optional, Sequence, Tuple

import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.exceptions import NoScriptError, RedisError, ResponseError
from redis.retry import Retry
from redis.sentinel import Sentinel

from notify_server.protocol.emit_script import EMIT_SCRIPT, record_arguments
from notify_server.protocol.names import DEFAULT_HISTORY_MAXLEN, DEFAULT_PREFIX, Keys
from notify_server.protocol.task_events import ONCE_WINDOW, encode_event

log = logging.getLogger(__name__)

# Writes not replicated in time are logged at most once per this many seconds.
UNREPLICATED_LOG_EVERY = 60.0

# Held while an emitter sets itself up in a new process (a fresh one after fork).
_FIRST_USE = threading.Lock()


# The Redis clients a forked child inherited from its parent, kept from the
# garbage collector: closing one takes its pool's lock, which a writer thread
# of the parent may have held at the fork (then the child would wait forever).
_INHERITED: List[redis.Redis] = []


def _after_fork_in_child() -> None:
    global _FIRST_USE
    _FIRST_USE = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)

class Emitter:
    """Writes events to the history stream and the live channel, and each
    task event into its task's record, with one atomic script call per
    event (`protocol.emit_script`; docs/protocol.md section 6).

    `emit` never raises and does not wait for Redis: it queues the event and
    returns (only when Redis is up but the queue is full, because events come
    faster than Redis takes them, does it wait for room, at most `timeout`
    seconds). A writer thread per process sends what is queued in pipelined
    batches (up to `batch_size` script calls in one round trip), oldest
    first, so each task's events keep their order and each transition's
    once-only key is checked by the script as before. While events keep
    coming the writer lets a batch fill for up to `linger` seconds (10 ms)
    before it sends it: a round trip costs the process about as much CPU for
    one event as for ten. After a quiet spell the first event goes at once,
    and `flush` cuts the wait short. `flush(timeout)`
    waits until everything queued so far is written. A value JSON cannot
    encode is written as its text (logged once per type).

    The queue holds at most `buffer_size` events: while Redis is
    unreachable they wait there (beyond it the oldest are dropped and
    counted in `dropped`), and the writer tries again every
    `retry_interval` seconds. One warning is logged per outage, and one
    line when Redis is back. A process that exits normally writes what it
    holds first, for at most `exit_timeout` seconds (`atexit`; Celery's
    pool children, which leave with `os._exit`, call `flush` from the
    `worker_process_shutdown` signal: see `worker.hook`). A process killed
    with SIGKILL loses what it held.

    Safe across fork (Celery's prefork pool): each process lazily creates
    its own connection, lock, queue and writer thread on first use. Safe to
    call from several threads of one process.

    With `wait_replicas` N > 0 each batch is followed, in the same round
    trip, by ``WAIT N`` for at most `wait_timeout` seconds: writes that did
    not reach N replicas in time are still written (and not retried),
    counted in `unreplicated` and logged at most once a minute.

    With `sentinels` ((host, port) pairs) and `master`, Redis is the primary
    Redis Sentinel names (`redis_url`, if given, supplies only the database
    and password): after a failover the batch that fails stays queued and
    the next attempt reaches the new primary.
    """

    def __init__(self, redis_url: Optional[str], *, prefix: str = DEFAULT_PREFIX,
                 history_maxlen: int = DEFAULT_HISTORY_MAXLEN, timeout: float = 0.5,
                 buffer_size: int = 1000, retry_interval: float = 1.0,
                 sentinels: Sequence[Tuple[str, int]] = (), master: Optional[str] = None,
                 wait_replicas: int = 0, wait_timeout: float = 0.1, batch_size: int = 500,
                 exit_timeout: float = 2.0, linger: float = 0.01):
        self._url = redis_url
        self._sentinels, self._master = tuple(sentinels), master
        keys = Keys(prefix)
        self._keys = (keys.history_stream, keys.events_channel)
        self._once_prefix, self._root = keys.once_prefix, keys.root
        self._maxlen = history_maxlen
        self._timeout, self._buffer_size, self._retry_interval = timeout, buffer_size, retry_interval
        self._wait_replicas, self._wait_ms = wait_replicas, max(1, int(wait_timeout * 1000))
        self._batch_size, self._exit_timeout = max(1, batch_size), exit_timeout
        self._linger = linger
        self._pid: Optional[int] = None
        self.unreplicated = 0  # written, but not on `wait_replicas` replicas in time
        self._unreplicated_logged_at = -math.inf
        self.dropped = 0
        self.written = 0
        self.duplicates = 0
        # Types written as their text because JSON has no form for them, already logged.
        self._replaced_logged: set = set()

    def emit(self, message: dict, once: Optional[str] = None,
             record: Optional[Mapping[str, Any]] = None) -> None:
        """Queue `message` ({"type", "data"}) for the writer thread; with
        `once`, it is written only if that transition was not written
        already. A task event also updates its task's record; `record` adds
        what the event does not carry (``attempt``, ``time``, ``name``,
        ``worker``, ``runtime``; the time defaults to now). Returns at once."""
        self.emit_many([(message, once, record)])

    def emit_many(self, items: Iterable[Tuple[dict, Optional[str],
                                               Optional[Mapping[str, Any]]]]) -> None:
        """`emit` for each (message, once, record) of `items`, in order, queued
        at once (the Celery event bridge writes what one read brought)."""
        now = time.time()
        replaced: set = set()
        queued = [_Pending(encode_event(message, replaced),
                           "" if once is None else self._once_prefix + once,
                           record_arguments(message, {"time": now, **(record or {})}))
                  for message, once, record in items]
        if replaced - self._replaced_logged:
            self._log_replaced(replaced)
        self._ensure_process()
        with self._changed:
            for pending in queued:
                self._queue_locked(pending)
            if self._writer_waiting:
                self._changed.notify_all()

    def _queue_locked(self, pending: "_Pending") -> None:
        """Append `pending` (the lock held): when the queue is full, wait a
        little for room while Redis is up, else drop the oldest."""
        if len(self._queue) >= self._buffer_size and self._down_since is None:
            # Redis is up but slower than the emits: wait for room, a bounded time.
            self._changed.notify_all()
            self._changed.wait_for(lambda: len(self._queue) < self._buffer_size, self._timeout)
        if len(self._queue) >= self._buffer_size:
            self._queue.popleft()
            self.dropped += 1
            if not self._drop_logged:
                self._drop_logged = True
                log.warning("notify: the buffer of %d is full while Redis is unreachable; "
                            "dropping the oldest events (%d so far; logged once per outage)",
                            self._buffer_size, self.dropped)
        pending.number = self._numbers = self._numbers + 1
        self._queue.append(pending)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event queued before the call is written (or
        refused as a duplicate, or dropped), for at most `timeout` seconds;
        True when nothing is left, False when events are still waiting
        (Redis unreachable, or slower than the timeout)."""
        self._ensure_process()
        with self._changed:
            if not self._queue:
                return True
            last = self._queue[-1]
            self._hurry = True
            self._changed.notify_all()
            return self._changed.wait_for(
                lambda: not self._queue or self._queue[0].number > last.number, timeout)

    @property
    def pending(self) -> int:
        """Events queued and not written yet (those in a batch in flight included)."""
        self._ensure_process()
        with self._changed:
            return len(self._queue)

    def _ensure_process(self) -> None:
        if self._pid == os.getpid():
            return
        with _FIRST_USE:
            if self._pid == os.getpid():
                return
            if self._pid is not None:  # forked: the parent's client is never used nor closed
                _INHERITED.append(self._redis)
            # Oldest first; a batch in flight stays here until Redis answered it.
            self._queue: Deque[_Pending] = collections.deque()
            self._changed = threading.Condition(threading.Lock())
            self._writer_waiting = False
            self._hurry = False  # someone waits in `flush`: no lingering
            self._numbers = 0  # the last queued event's number
            self._drop_logged = False  # in this outage
            self._down_since: Optional[float] = None
            self._redis = self._client()
            self._sha = hashlib.sha1(EMIT_SCRIPT.encode()).hexdigest()
            threading.Thread(target=self._write_forever, name="notify-emitter",
                             daemon=True).start()
            atexit.register(self._flush_at_exit, os.getpid())
            self._pid = os.getpid()

    def _client(self) -> redis.Redis:
        options = {"socket_timeout": self._timeout, "socket_connect_timeout": self._timeout,
                   "retry": Retry(NoBackoff(), 0)}
        if not self._sentinels:
            return redis.Redis.from_url(self._url, **options)
        options.update(connection_options(self._url))
        sentinel = Sentinel(list(self._sentinels), sentinel_kwargs={
            "socket_timeout": self._timeout, "socket_connect_timeout": self._timeout})
        return sentinel.master_for(self._master, **options)

    def _write_forever(self) -> None:
        """The writer thread: send what is queued, a batch per round trip;
        after a failure, wait `retry_interval` and try the same batch again."""
        retry_at = sent_at = 0.0
        while True:
            with self._changed:
                self._writer_waiting = True
                while not self._queue or time.monotonic() < retry_at:
                    self._changed.wait(None if not self._queue
                                       else retry_at - time.monotonic())
                self._writer_waiting = False
                if (self._linger and not self._hurry and len(self._queue) < self._batch_size
                        and time.monotonic() - sent_at < 2 * self._linger):
                    # Events keep coming: let the batch fill a moment, since a
                    # round trip costs the process about as much CPU for one event
                    # as for ten. After a quiet spell the first goes out at once.
                    self._changed.wait_for(lambda: self._hurry or len(self._queue)
                                           >= self._batch_size, self._linger)
                batch = list(itertools.islice(self._queue, self._batch_size))
            sent_at = time.monotonic()
            try:
                results, replicas = self._send(batch)
            except RedisError as exc:
                retry_at = time.monotonic() + self._retry_interval
                self._note_outage(exc)
                continue
            except Exception:  # our bug: logged, and the writer goes on
                retry_at = time.monotonic() + self._retry_interval
                log.exception("notify: writing task events failed; trying again in %.1f s",
                              self._retry_interval)
                continue
            if not self._settle(batch, results, replicas):
                retry_at = time.monotonic() + self._retry_interval

    def _send(self, batch: List["_Pending"]) -> Tuple[list, Optional[int]]:
        """One round trip: the script for each event of `batch` (loading the
        script first if Redis lost it), then WAIT when asked. Returns each
        call's reply (an exception for a call Redis refused) and the WAIT's."""
        commands = [("EVALSHA", self._sha, 3, *self._keys, item.once, item.event,
                     self._maxlen, ONCE_WINDOW, self._root if item.record else "", *item.record)
                    for item in batch]
        if self._wait_replicas:
            commands.append(("WAIT", self._wait_replicas, self._wait_ms))
        # Packed and read on one connection: redis-py's Pipeline object costs
        # more per command than the packing, on the worker's own CPU.
        pool = self._redis.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_packed_command(connection.pack_commands(commands))
            replies = []
            for _ in commands:
                try:
                    replies.append(connection.read_response())
                except ResponseError as exc:  # one call refused; the rest still answer
                    replies.append(exc)
        except BaseException:
            connection.disconnect()  # replies may be left unread on it
            raise
        finally:
            pool.release(connection)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            try:
                self._redis.script_load(EMIT_SCRIPT)
            except RedisError:
                pass  # those calls stay queued, and the next round loads it again
        if self._wait_replicas:
            replicas = replies.pop()
            return replies, replicas if isinstance(replicas, int) else 0
        return replies, None

    def _settle(self, batch: List["_Pending"], replies: list, replicas: Optional[int]) -> bool:
        """Take what Redis answered out of the queue and count it; a call it
        refused (the script missing after a restart or failover, or an
        error) stays queued, in order, for the next round. False when Redis
        answered with an error other than a missing script: the writer
        then waits before it tries again."""
        refused = [(item, reply) for item, reply in zip(batch, replies)
                   if isinstance(reply, Exception)]
        errors = [reply for _, reply in refused if not isinstance(reply, NoScriptError)]
        written = sum(1 for reply in replies if not isinstance(reply, Exception)
                      and reply is not None)
        duplicates = sum(1 for reply in replies if reply is None)
        with self._changed:
            refused_ids = {id(item) for item, _ in refused}
            last = batch[-1].number
            keep = [item for item in self._queue if item.number > last or id(item) in refused_ids]
            self._queue.clear()
            self._queue.extend(keep)
            self.written += written
            self.duplicates += duplicates
            if not self._queue:
                self._hurry = False
            self._changed.notify_all()
        if replicas is not None and written and replicas < self._wait_replicas:
            self._note_unreplicated(written, replicas)
        if errors:
            self._note_outage(errors[0])
            return False
        if self._down_since is not None and not refused:
            log.warning("notify: Redis is back after %.1f s; pending events written (%d dropped)",
                        time.monotonic() - self._down_since, self.dropped)
            self._down_since = None
            self._drop_logged = False
        return True

    def _note_unreplicated(self, written: int, replicas: int) -> None:
        self.unreplicated += written
        now = time.monotonic()
        if now - self._unreplicated_logged_at >= UNREPLICATED_LOG_EVERY:
            self._unreplicated_logged_at = now
            log.warning("notify: %d event(s) reached %d of %d replica(s) within %d ms; they are "
                        "written on the primary but a failover now could lose them (%d such "
                        "writes so far; logged at most once a minute)", written, replicas,
                        self._wait_replicas, self._wait_ms, self.unreplicated)

    def _log_replaced(self, replaced: set) -> None:
        for kind in replaced - self._replaced_logged:
            self._replaced_logged.add(kind)
            log.warning("notify: an event held a %s, which JSON cannot encode; it was written "
                        "as its text (logged once per type)", kind.__name__)

    def _note_outage(self, exc: Exception) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("notify: cannot write task events to Redis (%s); buffering up to %d",
                        exc, self._buffer_size)

    def flush_before_exit(self) -> bool:
        """`flush` for at most `exit_timeout` seconds, and a warning naming
        what is left; for a process about to exit."""
        if self._pid != os.getpid():
            return True  # nothing emitted in this process
        if self.flush(self._exit_timeout):
            return True
        log.warning("notify: exiting with %d task event(s) not written to Redis within %.1f s",
                    self.pending, self._exit_timeout)
        return False

    def _flush_at_exit(self, pid: int) -> None:
        if pid == os.getpid():
            self.flush_before_exit()


class _Pending:
    """One queued event: the script's arguments, and its place in the queue."""

    __slots__ = ("event", "once", "record", "number")

    def __init__(self, event: bytes, once: str, record: List[str]):
        self.event, self.once, self.record = event, once, record
        self.number = 0  # set under the queue's lock: 1, 2, ... in queue order


def connection_options(url: Optional[str]) -> dict:
    """The database and credentials of a Redis URL, without its host and
    port: what a Sentinel-found primary is reached with."""
    if not url:
        return {}
    return {key: value for key, value in parse_url(url).items()
            if key in ("db", "password", "username")}
