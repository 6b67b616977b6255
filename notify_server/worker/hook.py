"""The worker-side hook: Celery signals in, task events out to Redis.

In a user's Celery app module::

    from notify_server.worker import install
    notifier = install(app)                 # the one line

and, optionally, in a task body::

    notifier.progress(3, 10, "3 of 10 parts")
"""

import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence, Tuple

from celery import Celery, Task, current_task, signals

from notify_server.protocol import task_events as events
from notify_server.protocol.names import (DEFAULT_HISTORY_MAXLEN, DEFAULT_OWNER_ARG, DEFAULT_PREFIX,
                                          DEFAULT_SENTINEL_MASTER, DEFAULT_SUBJECT_ARG,
                                          parse_addresses)
from notify_server.worker.emitter import Emitter

log = logging.getLogger(__name__)

# A retried task's next attempt may start in another process at once: the
# retrying attempt's events are written first, waiting at most this long.
RETRY_FLUSH_TIMEOUT = 1.0

# How far up the stack `before_task_publish` looks for the `Task.retry` sending it.
RETRY_FRAME_DEPTH = 40

# owner(args, kwargs) -> the task's owner, or None.
OwnerFunction = Callable[[Any, Any], Optional[str]]


def install(app: Celery, redis_url: Optional[str] = None, *, prefix: Optional[str] = None,
            subject_arg: Optional[str] = None, owner_arg: Optional[str] = None,
            owner: Optional[OwnerFunction] = None, history_maxlen: Optional[int] = None,
            sentinels: Optional[Sequence[Tuple[str, int]]] = None,
            master: Optional[str] = None, wait_replicas: Optional[int] = None,
            wait_timeout: Optional[float] = None, buffer_size: Optional[int] = None,
            ) -> "Notifier":
    """Emit task events for every task of `app`; returns the `Notifier`.

    Redis is `redis_url`, else $NOTIFY_REDIS_URL, else $REDIS_URL, else the
    app's broker URL when that is a Redis URL; raises ValueError when none is
    found. With `sentinels` (else $NOTIFY_REDIS_SENTINELS, "host:port,...")
    Redis is the primary that Redis Sentinel names for `master` (else
    $NOTIFY_REDIS_MASTER, "mymaster"), and the URL, optional, only gives the
    database and password. The other arguments default to $NOTIFY_PREFIX ("notify"),
    $NOTIFY_SUBJECT_ARG ("avid"), $NOTIFY_OWNER_ARG ("user_id"; also when
    empty) and $NOTIFY_HISTORY_MAXLEN (10000); prefix, subject_arg and
    owner_arg must match the server's settings of the same names. With
    `wait_replicas` N (else $NOTIFY_EMIT_WAIT_REPLICAS, 0) each event is
    acknowledged only once N replicas have it, or `wait_timeout` seconds
    (else $NOTIFY_EMIT_WAIT_TIMEOUT, 0.1) passed: see `Emitter`. Each process
    queues at most `buffer_size` (else $NOTIFY_EMIT_BUFFER, 1000) events while
    Redis is unreachable; beyond that the oldest are dropped, counted and logged.

    A task's owner is its keyword argument `owner_arg`, or, when `owner` is
    given, what `owner(args, kwargs)` returns for the task's arguments (a
    repr Celery sends is parsed first); owner_arg is then not read. A string
    is the owner as it is, a whole number its decimal string; None or
    anything else means no owner. Every event of an owned task carries it as
    the top-level field "owner"; an `owner` that raises is logged (once per
    exception type in each process) and the event goes out without one.
    """
    url = redis_url or os.environ.get("NOTIFY_REDIS_URL") or os.environ.get("REDIS_URL")
    if sentinels is None:
        try:
            sentinels = parse_addresses(os.environ.get("NOTIFY_REDIS_SENTINELS", ""))
        except ValueError as exc:
            raise ValueError(f"NOTIFY_REDIS_SENTINELS: {exc}") from None
    broker = str(app.conf.broker_url or "")
    if not url and not sentinels and broker.startswith(("redis://", "rediss://", "unix://")):
        url = broker
    if not url and not sentinels:
        raise ValueError("notify_server.worker.install: no Redis URL; pass redis_url= "
                         "or set NOTIFY_REDIS_URL (or NOTIFY_REDIS_SENTINELS)")
    emitter = Emitter(url, prefix=prefix or os.environ.get("NOTIFY_PREFIX", DEFAULT_PREFIX),
                      history_maxlen=history_maxlen or int(
                          os.environ.get("NOTIFY_HISTORY_MAXLEN", DEFAULT_HISTORY_MAXLEN)),
                      sentinels=sentinels,
                      master=(master or os.environ.get("NOTIFY_REDIS_MASTER")
                              or DEFAULT_SENTINEL_MASTER),
                      wait_replicas=(wait_replicas if wait_replicas is not None else
                                     int(os.environ.get("NOTIFY_EMIT_WAIT_REPLICAS") or 0)),
                      wait_timeout=(wait_timeout if wait_timeout is not None else
                                    float(os.environ.get("NOTIFY_EMIT_WAIT_TIMEOUT") or 0.1)),
                      buffer_size=(buffer_size if buffer_size is not None else
                                   int(os.environ.get("NOTIFY_EMIT_BUFFER") or 1000)))
    notifier = Notifier(app, emitter,
                        subject_arg or os.environ.get("NOTIFY_SUBJECT_ARG", DEFAULT_SUBJECT_ARG),
                        owner_arg=(owner_arg or os.environ.get("NOTIFY_OWNER_ARG")
                                   or DEFAULT_OWNER_ARG),
                        owner=owner)
    notifier.connect()
    return notifier


class Notifier:
    """Turns Celery's signals for one app into protocol events.

    `task_prerun`, `task_success`, `task_failure` and `task_retry` run in the
    pool child; `task_revoked` and the failure of a lost worker run in the
    parent process. The emitter makes its Redis client and writer thread per
    process, so both work; a child that exits writes what it holds first
    (`worker_process_shutdown`). No handler raises, and none waits for Redis
    but a retry's (a retry is rare, and its next attempt may start in
    another process at once: the retrying attempt's events go first, within
    RETRY_FLUSH_TIMEOUT): emitting must never fail or slow a task.

    Celery sends a retry's next attempt before its `task_retry` signal, so
    `task_retrying` is written from `before_task_publish` of that message,
    before it is sent; `task_retry` then writes nothing for that attempt, and
    is the fallback for a retry sent some other way.

    Every event of a task with an owner (see `install`) carries it as the
    top-level "owner" of the message, beside "type" and "data".
    """

    def __init__(self, app: Celery, emitter: Emitter, subject_arg: str, *,
                 owner_arg: str = DEFAULT_OWNER_ARG, owner: Optional[OwnerFunction] = None):
        self.app, self.emitter, self._subject_arg = app, emitter, subject_arg
        self._owner_arg, self._owner_function = owner_arg, owner
        self._owner_errors_logged: set = set()
        # (task id, attempt) of retries whose task_retrying went out before the
        # retry was sent; task_retry takes its entry out and writes nothing.
        self._retrying_written: set = set()

    def connect(self) -> None:
        signals.task_prerun.connect(self._on_prerun, weak=False)
        signals.task_success.connect(self._on_success, weak=False)
        signals.task_failure.connect(self._on_failure, weak=False)
        signals.task_retry.connect(self._on_retry, weak=False)
        signals.before_task_publish.connect(self._on_before_publish, weak=False)
        signals.task_revoked.connect(self._on_revoked, weak=False)
        signals.worker_process_shutdown.connect(self._on_process_shutdown, weak=False)

    def progress(self, current: float, total: float, message: str = "") -> None:
        """Emit `task_progress` for the task currently running in this thread."""
        task = current_task
        if task is None or not task.request.id:
            return
        request = task.request
        self._emit(events.task_progress, request.id, request.args, request.kwargs,
                   current, total, events.safe_text(message),
                   record=_record_of(task, request, _attempt(request)))

    def _mine(self, sender: Any) -> bool:
        return getattr(sender, "app", None) is self.app

    def _emit(self, build: Callable[..., dict], task_id: str, args: Any, kwargs: Any,
              *more: Any, attempt: Optional[int] = None, record: Optional[dict] = None) -> None:
        """Emit `build(task_id, subject, *more)`, with the task's owner if it
        has one. With `attempt` (the request's `retries`) the event is a
        lifecycle transition, written once even when the Celery event bridge
        writes it too. `record` adds what the task's record keeps beyond
        the event (its name, worker, attempt)."""
        message = build(task_id, events.subject_of(args, kwargs, self._subject_arg), *more)
        once = (None if attempt is None
                else events.transition_key(task_id, message["type"], attempt))
        self.emitter.emit(events.with_owner(message, self._owner(args, kwargs)), once=once,
                          record=record)

    def _owner(self, args: Any, kwargs: Any) -> Optional[str]:
        if self._owner_function is None:
            return events.owner_of(kwargs, self._owner_arg)
        try:
            return events.owner_text(self._owner_function(events.arguments(args),
                                                          events.arguments(kwargs)))
        except Exception as exc:  # the user's function must not fail the task
            if type(exc) not in self._owner_errors_logged:
                self._owner_errors_logged.add(type(exc))
                log.warning("notify: owner(args, kwargs) raised %r; events go out without "
                            "an owner (logged once per exception type)", exc)
            return None

    def _on_prerun(self, sender=None, task_id=None, args=None, kwargs=None, **_):
        if self._mine(sender):
            self._emit(events.task_started, task_id, args, kwargs,
                       **_lifecycle(sender, sender.request))

    def _on_success(self, sender=None, result=None, **_):
        if self._mine(sender):
            request = sender.request
            text = "success" if result is None else events.safe_text(result)
            self._emit(events.task_completed, request.id, request.args, request.kwargs, text,
                       **_lifecycle(sender, request))

    def _on_failure(self, sender=None, task_id=None, exception=None, args=None, kwargs=None, **_):
        if self._mine(sender):
            self._emit(events.task_failed, task_id, args, kwargs, _reason(exception),
                       **_lifecycle(sender, sender.request))

    def _on_retry(self, sender=None, request=None, reason=None, **_):
        if self._mine(sender) and request is not None:
            try:
                self._retrying_written.remove((request.id, _attempt(request)))
                return  # written before the retry was sent (_on_before_publish)
            except KeyError:
                pass
            self._emit(events.task_retrying, request.id, request.args, request.kwargs,
                       events.safe_text(reason), **_lifecycle(sender, request))
            # The next attempt, already sent, may start in another pool process:
            # its task_started must not reach Redis before this attempt's events.
            self.emitter.flush(RETRY_FLUSH_TIMEOUT)

    def _on_before_publish(self, sender=None, headers=None, **_):
        """The running task's retry is about to be sent: its `task_retrying`
        goes first, with the reason `task_retry` would give."""
        task = self.app.current_worker_task
        if task is None or not isinstance(headers, dict) or not self._mine(task):
            return
        request = task.request
        if headers.get("id") != request.id or headers.get("retries") != _attempt(request) + 1:
            return
        retry = _retry_being_sent()
        if retry is None:  # not sent by Task.retry: left to task_retry
            return
        self._emit(events.task_retrying, request.id, request.args, request.kwargs,
                   events.safe_text(retry), **_lifecycle(task, request))
        self._retrying_written.add((request.id, _attempt(request)))
        self.emitter.flush(RETRY_FLUSH_TIMEOUT)

    def _on_process_shutdown(self, **_):
        """A pool child is leaving (max-tasks-per-child, a warm shutdown, a
        scale-down): write what its emitter holds, within its exit bound.
        Billiard ends children with `os._exit`, so `atexit` would not run."""
        self.emitter.flush_before_exit()

    def _on_revoked(self, sender=None, request=None, terminated=False, signum=None,
                    expired=False, **_):
        if self._mine(sender) and request is not None:
            self._emit(events.task_revoked, request.id, request.args, request.kwargs,
                       events.revoked_text(expired, terminated, signum),
                       **_lifecycle(sender, request))


def _retry_being_sent() -> Any:
    """The `Retry` that the `Task.retry` up this thread's stack raises once
    the message being published is sent, or None when no `Task.retry` is
    sending it (it builds the `Retry`, the reason `task_retry` reports,
    before it sends)."""
    code = Task.retry.__code__
    frame = sys._getframe(1)
    for _ in range(RETRY_FRAME_DEPTH):
        if frame is None:
            return None
        if frame.f_code is code:
            return frame.f_locals.get("ret")
        frame = frame.f_back
    return None


def _lifecycle(task: Any, request: Any) -> dict:
    """`_emit`'s arguments for a lifecycle transition of `task` run as `request`."""
    attempt = _attempt(request)
    return {"attempt": attempt, "record": _record_of(task, request, attempt)}


def _record_of(task: Any, request: Any, attempt: int) -> dict:
    name = getattr(task, "name", None)
    if not isinstance(name, str):  # the request: the worker's (task_name) or the task's context
        name = getattr(request, "task_name", None) or getattr(request, "task", None)
    return {"attempt": attempt, "name": name if isinstance(name, str) else None,
            "worker": getattr(request, "hostname", None)}


def _attempt(request: Any) -> int:
    """The request's `retries` (0 on a first run), as Celery's events count it."""
    retries = getattr(request, "retries", None)
    return retries if isinstance(retries, int) else 0


def _reason(exception: Any) -> str:
    if exception is None:
        return "failed"
    text = events.safe_text(exception)
    name = type(exception).__name__
    return f"{name}: {text}" if text else name
