"""A Celery app with the worker hook (`install(app)`), for the task-record tests.

`celery -A tests.support.hooked_app worker`: its broker is $REDIS_URL, and
so is its events Redis unless $NOTIFY_REDIS_URL names another. Each task
is one outcome a record must show: success, failure, two retries then
success, a retry overtaken by its next attempt, progress reports, and one
that waits for a Redis key the test sets (so a test decides when it finishes).
"""

import os
import time

import redis
from celery import Celery, Task

from notify_server.worker import install

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("hooked", broker=REDIS_URL)
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
                worker_prefetch_multiplier=1)
notifier = install(app, os.environ.get("NOTIFY_REDIS_URL") or REDIS_URL)

# How long `gate` waits for its key before it gives up (fails).
GATE_TIMEOUT = 60.0


@app.task(name="hooked.succeed")
def succeed(avid, user_id=None):
    return f"done {avid}"


@app.task(name="hooked.fail")
def fail(avid, user_id=None):
    raise ValueError(f"cannot do {avid}")


@app.task(name="hooked.flaky", bind=True)
def flaky(self, avid, failures=2, user_id=None):
    """Raise `failures` times (retried at once each time), then succeed."""
    if self.request.retries < failures:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} of {avid}"),
                         countdown=0.05, max_retries=failures)
    return f"done {avid} after {self.request.retries} retries"


class WaitsForNextAttempt(Task):
    """A task whose `on_retry` (run before Celery sends `task_retry`) returns
    only once the next attempt, already sent, has started in another pool
    process and written its `task_started`."""

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        wait_for_key(overtaken_key(args[0]), args[0])


def overtaken_key(avid: str) -> str:
    return f"hooked:overtaken:{avid}"


@app.task(name="hooked.overtaken", bind=True, base=WaitsForNextAttempt)
def overtaken(self, avid, user_id=None):
    """Retried once; the retry's attempt starts before the first attempt's
    `task_retry` signal (needs two pool processes)."""
    if self.request.retries == 0:
        raise self.retry(exc=RuntimeError(f"first attempt of {avid}"), countdown=0,
                         max_retries=1)
    notifier.emitter.flush(5.0)  # this attempt's task_started is in Redis
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.set(overtaken_key(avid), 1, ex=60)
    finally:
        client.close()
    return f"done {avid}"


@app.task(name="hooked.steps")
def steps(avid, count=3, user_id=None):
    for step in range(1, count + 1):
        notifier.progress(step, count, f"step {step} of {avid}")
    return f"stepped {avid}"


@app.task(name="hooked.gate")
def gate(avid, key, user_id=None):
    """Succeed once the Redis key `key` exists (set by the test)."""
    return wait_for_key(key, avid)


def wait_for_key(key: str, avid: str) -> str:
    client = redis.Redis.from_url(REDIS_URL)
    deadline = time.monotonic() + GATE_TIMEOUT
    try:
        while not client.exists(key):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{key} never set")
            time.sleep(0.01)
    finally:
        client.close()
    return f"opened {avid}"
