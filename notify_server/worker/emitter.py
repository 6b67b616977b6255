"""Worker side: write task events to Redis (docs/protocol.md section 6).

Synchronous (redis-py), because Celery task bodies and signal handlers are.
"""

import collections
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
from redis.exceptions import NoScriptError, RedisError
from redis.retry import Retry
from redis.sentinel import Sentinel

from notify_server.protocol.emit_script import EMIT_SCRIPT, record_arguments
from notify_server.protocol.names import DEFAULT_HISTORY_MAXLEN, DEFAULT_PREFIX, Keys
from notify_server.protocol.task_events import ONCE_WINDOW, encode_event

log = logging.getLogger(__name__)

# Writes not replicated in time are logged at most once per this many seconds.
UNREPLICATED_LOG_EVERY = 60.0
# At most this many script calls go to Redis in one round trip (one pipeline).
BATCH = 256

class Emitter:
    """Writes events to the history stream and the live channel, and each
    task event into its task's record, in one atomic script call
    (`protocol.emit_script`; docs/protocol.md section 6).

    `emit` never raises and never blocks longer than about `timeout` seconds;
    a value JSON cannot encode is written as its text (logged once per type).
    While Redis is unreachable, events wait in a buffer of `buffer_size`
    (beyond it the oldest are dropped and counted in `dropped`); they are
    written in order by the next `emit` or by a background flusher once Redis
    answers again. One warning is logged per outage.

    Safe across fork (Celery's prefork pool): each process lazily creates its
    own connection, lock and buffer on first use. Safe to call from several
    threads of one process.

    With `wait_replicas` N > 0 each write is followed, in the same round
    trip, by ``WAIT N`` for at most `wait_timeout` seconds: a write that did
    not reach N replicas in time is still written (and not retried), counted
    in `unreplicated` and logged at most once a minute.

    With `sentinels` ((host, port) pairs) and `master`, Redis is the primary
    Redis Sentinel names (`redis_url`, if given, supplies only the database
    and password): after a failover the write that fails is kept in the
    buffer and the next attempt reaches the new primary.
    """

    def __init__(self, redis_url: Optional[str], *, prefix: str = DEFAULT_PREFIX,
                 history_maxlen: int = DEFAULT_HISTORY_MAXLEN, timeout: float = 0.5, buffer_size: int = 1000,
                 retry_interval: float = 1.0, sentinels: Sequence[Tuple[str, int]] = (),
                 master: Optional[str] = None, wait_replicas: int = 0,
                 wait_timeout: float = 0.1):
        self._url = redis_url
        self._sentinels, self._master = tuple(sentinels), master
        keys = Keys(prefix)
        self._keys = [keys.history_stream, keys.events_channel]
        self._once_prefix, self._root = keys.once_prefix, keys.root
        self._maxlen = history_maxlen
        self._timeout, self._buffer_size, self._retry_interval = timeout, buffer_size, retry_interval
        self._wait_replicas, self._wait_ms = wait_replicas, max(1, int(wait_timeout * 1000))
        self._pid: Optional[int] = None
        self.unreplicated = 0  # written, but not on `wait_replicas` replicas in time
        self._unreplicated_logged_at = -math.inf
        self.dropped = 0
        self.written = 0
        self.duplicates = 0
        # Types written as their text because JSON has no form for them, already logged.
        self._replaced_logged: set = set()

    def _ensure_process(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # (event JSON, transition key or "", the record update's pairs), oldest first.
        self._pending: Deque[Tuple[bytes, str, List[str]]] = collections.deque()
        self._down_since: Optional[float] = None
        self._retry_at = 0.0
        self._flusher: Optional[threading.Thread] = None
        self._client_for_pipelines = self._client()
        self._script = self._client_for_pipelines.register_script(EMIT_SCRIPT)

    def _client(self) -> redis.Redis:
        options = {"socket_timeout": self._timeout, "socket_connect_timeout": self._timeout,
                   "retry": Retry(NoBackoff(), 0)}
        if not self._sentinels:
            return redis.Redis.from_url(self._url, **options)
        options.update(connection_options(self._url))
        sentinel = Sentinel(list(self._sentinels), sentinel_kwargs={
            "socket_timeout": self._timeout, "socket_connect_timeout": self._timeout})
        return sentinel.master_for(self._master, **options)

    def emit(self, message: dict, once: Optional[str] = None,
             record: Optional[Mapping[str, Any]] = None) -> None:
        """Queue `message` ({"type", "data"}) and write everything pending;
        with `once`, only if that transition was not written already. A task
        event also updates its task's record; `record` adds what the event
        does not carry (``attempt``, ``time``, ``name``, ``worker``,
        ``runtime``; the time defaults to now)."""
        self.emit_many([(message, once, record)])

    def emit_many(self, items: Iterable[Tuple[dict, Optional[str],
                                             Optional[Mapping[str, Any]]]]) -> None:
        """`emit` for each (message, once, record) of `items`, in their
        order, at most `BATCH` script calls per round trip (a pipeline):
        what one call would do per event, in fewer round trips. The same
        guarantees: each is written once per `once` key, in order, never
        raising; while Redis is unreachable they join the buffer."""
        for chunk in _chunks(items, BATCH):
            payloads = [self._payload(*item) for item in chunk]
            self._ensure_process()
            with self._lock:
                for payload in payloads:
                    if len(self._pending) >= self._buffer_size:
                        self._pending.popleft()
                        self.dropped += 1
                    self._pending.append(payload)
                self._flush_locked()

    def _payload(self, message: dict, once: Optional[str],
                 record: Optional[Mapping[str, Any]]) -> Tuple[bytes, str, List[str]]:
        extra = {"time": time.time(), **(record or {})}
        replaced: set = set()
        payload = (encode_event(message, replaced),
                   "" if once is None else self._once_prefix + once,
                   record_arguments(message, extra))
        if replaced - self._replaced_logged:
            self._log_replaced(replaced)
        return payload

    @property
    def pending(self) -> int:
        """Events waiting for Redis (taken under the lock: a flush in progress ends first)."""
        self._ensure_process()
        with self._lock:
            return len(self._pending)

    def _flush_locked(self) -> None:
        if time.monotonic() < self._retry_at:
            return
        while self._pending:
            answers, error = self._write(list(itertools.islice(self._pending, BATCH)))
            for written in answers:
                self._pending.popleft()
                if written is None:
                    self.duplicates += 1
                else:
                    self.written += 1
            if error is not None:
                self._note_outage(error)
                return
        if self._down_since is not None:
            log.warning("notify: Redis is back after %.1f s; pending events written (%d dropped)",
                        time.monotonic() - self._down_since, self.dropped)
            self._down_since = None

    def _write(self, batch: List[Tuple[bytes, str, List[str]]],
               ) -> Tuple[list, Optional[RedisError]]:
        """The script for each of `batch`, in order, in one round trip (then
        WAIT for the replicas, in the same one). Returns the answers of the
        first calls that ran (None for a transition written already) and the
        error that stopped the others, if one did. A call Redis refuses with
        NOSCRIPT (it lost the script: SCRIPT FLUSH, a restart) is made again
        at once through redis-py's `Script`, which loads it (that call alone
        is not waited for with WAIT; the next batch is). Should another
        writer load the script while this batch runs, a call after the
        refused one may run first: the once-only keys still hold."""
        calls = [([*self._keys, once], [payload, self._maxlen, ONCE_WINDOW,
                                        self._root if pairs else "", *pairs])
                 for payload, once, pairs in batch]
        try:
            if len(calls) == 1 and not self._wait_replicas:
                keys, args = calls[0]
                return [self._script(keys=keys, args=args)], None
            # EVALSHA itself: redis-py's `Script` on a pipeline would ask
            # SCRIPT EXISTS first, one more round trip per batch.
            pipe = self._client_for_pipelines.pipeline(transaction=False)
            for keys, args in calls:
                pipe.execute_command("EVALSHA", self._script.sha, len(keys), *keys, *args)
            if self._wait_replicas:
                pipe.execute_command("WAIT", self._wait_replicas, self._wait_ms)
            results = pipe.execute(raise_on_error=False)
        except RedisError as exc:
            return [], exc
        if self._wait_replicas:
            *results, replicas = results
        answers: list = []
        for (keys, args), result in zip(calls, results):
            if isinstance(result, NoScriptError):
                try:
                    result = self._script(keys=keys, args=args)
                except RedisError as exc:
                    return answers, exc
            elif isinstance(result, RedisError):
                return answers, result
            answers.append(result)
        if self._wait_replicas:
            self._count_replicated(sum(1 for written in answers if written is not None),
                                   replicas)
        return answers, None

    def _count_replicated(self, written: int, replicas: int) -> None:
        if not written or replicas >= self._wait_replicas:
            return
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
        self._retry_at = time.monotonic() + self._retry_interval
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("notify: cannot write task events to Redis (%s); buffering up to %d",
                        exc, self._buffer_size)
        if self._flusher is None or not self._flusher.is_alive():
            self._flusher = threading.Thread(target=self._flush_until_empty,
                                             name="notify-flusher", daemon=True)
            self._flusher.start()

    def _flush_until_empty(self) -> None:
        while True:
            time.sleep(self._retry_interval)
            with self._lock:
                self._flush_locked()
                if not self._pending:
                    return


def _chunks(items: Iterable, size: int) -> Iterable[list]:
    iterator = iter(items)
    while True:
        chunk = list(itertools.islice(iterator, size))
        if not chunk:
            return
        yield chunk


def connection_options(url: Optional[str]) -> dict:
    """The database and credentials of a Redis URL, without its host and
    port: what a Sentinel-found primary is reached with."""
    if not url:
        return {}
    return {key: value for key, value in parse_url(url).items()
            if key in ("db", "password", "username")}
