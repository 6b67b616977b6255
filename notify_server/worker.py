"""The worker-side hook: Celery signals in, task events out to Redis.

In a user's Celery app module::

    from notify_server.worker import install
    notifier = install(app)                 # the one line

and, optionally, in a task body::

    notifier.progress(3, 10, "3 of 10 parts")
"""

import os
from typing import Any, Optional

from celery import Celery, current_task, signals

from . import events
from .emitter import Emitter


def install(app: Celery, redis_url: Optional[str] = None, *, prefix: Optional[str] = None,
            subject_arg: Optional[str] = None, history_maxlen: Optional[int] = None) -> "Notifier":
    """Emit task events for every task of `app`; returns the `Notifier`.

    Redis is `redis_url`, else $NOTIFY_REDIS_URL, else $REDIS_URL, else the
    app's broker URL when that is a Redis URL; raises ValueError when none is
    found. The other arguments default to $NOTIFY_PREFIX ("notify"),
    $NOTIFY_SUBJECT_ARG ("avid") and $NOTIFY_HISTORY_MAXLEN (10000); prefix
    and subject_arg must match the server's settings of the same names.
    """
    url = redis_url or os.environ.get("NOTIFY_REDIS_URL") or os.environ.get("REDIS_URL")
    broker = str(app.conf.broker_url or "")
    if not url and broker.startswith(("redis://", "rediss://", "unix://")):
        url = broker
    if not url:
        raise ValueError("notify_server.worker.install: no Redis URL; pass redis_url= "
                         "or set NOTIFY_REDIS_URL")
    emitter = Emitter(url, prefix=prefix or os.environ.get("NOTIFY_PREFIX", "notify"),
                      history_maxlen=history_maxlen or int(
                          os.environ.get("NOTIFY_HISTORY_MAXLEN", "10000")))
    notifier = Notifier(app, emitter,
                        subject_arg or os.environ.get("NOTIFY_SUBJECT_ARG", "avid"))
    notifier.connect()
    return notifier


class Notifier:
    """Turns Celery's signals for one app into protocol events.

    `task_prerun`, `task_success`, `task_failure` and `task_retry` run in the
    pool child; `task_revoked` and the failure of a lost worker run in the
    parent process. The emitter makes its Redis client per process, so both
    work. No handler raises: emitting must never fail a task.
    """

    def __init__(self, app: Celery, emitter: Emitter, subject_arg: str):
        self.app, self.emitter, self._subject_arg = app, emitter, subject_arg

    def connect(self) -> None:
        signals.task_prerun.connect(self._on_prerun, weak=False)
        signals.task_success.connect(self._on_success, weak=False)
        signals.task_failure.connect(self._on_failure, weak=False)
        signals.task_retry.connect(self._on_retry, weak=False)
        signals.task_revoked.connect(self._on_revoked, weak=False)

    def progress(self, current: float, total: float, message: str = "") -> None:
        """Emit `task_progress` for the task currently running in this thread."""
        task = current_task
        if task is None or not task.request.id:
            return
        request = task.request
        self.emitter.emit(events.task_progress(
            request.id, self._subject(request.args, request.kwargs), current, total,
            events.safe_text(message)))

    def _mine(self, sender: Any) -> bool:
        return getattr(sender, "app", None) is self.app

    def _subject(self, args: Any, kwargs: Any) -> Any:
        return events.subject_of(args, kwargs, self._subject_arg)

    def _on_prerun(self, sender=None, task_id=None, args=None, kwargs=None, **_):
        if self._mine(sender):
            self.emitter.emit(events.task_started(task_id, self._subject(args, kwargs)))

    def _on_success(self, sender=None, result=None, **_):
        if self._mine(sender):
            request = sender.request
            text = "success" if result is None else events.safe_text(result)
            self.emitter.emit(events.task_completed(
                request.id, self._subject(request.args, request.kwargs), text))

    def _on_failure(self, sender=None, task_id=None, exception=None, args=None, kwargs=None, **_):
        if self._mine(sender):
            self.emitter.emit(events.task_failed(
                task_id, self._subject(args, kwargs), _reason(exception)))

    def _on_retry(self, sender=None, request=None, reason=None, **_):
        if self._mine(sender) and request is not None:
            self.emitter.emit(events.task_retrying(
                request.id, self._subject(request.args, request.kwargs),
                events.safe_text(reason)))

    def _on_revoked(self, sender=None, request=None, terminated=False, signum=None,
                    expired=False, **_):
        if self._mine(sender) and request is not None:
            if expired:
                text = "expired before it ran"
            elif terminated:
                text = f"terminated by signal {signum}"
            else:
                text = "revoked"
            self.emitter.emit(events.task_revoked(
                request.id, self._subject(request.args, request.kwargs), text))


def _reason(exception: Any) -> str:
    if exception is None:
        return "failed"
    text = events.safe_text(exception)
    name = type(exception).__name__
    return f"{name}: {text}" if text else name
