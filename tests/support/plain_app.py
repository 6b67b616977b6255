"""A plain Celery app, as a team already has one: no notify_server import, no hook.

`celery -A tests.support.plain_app worker -E`: its broker is $PLAIN_BROKER_URL.
The server learns about its tasks only from Celery's own events.
"""

import os
import time

import redis
from celery import Celery

app = Celery("plain", broker=os.environ.get("PLAIN_BROKER_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(worker_hijack_root_logger=False, broker_connection_retry_on_startup=True,
                worker_prefetch_multiplier=1)


@app.task(name="plain.fetch", bind=True)
def fetch(self, avid, seconds=0.1, fail=False, steps=0, user_id=None):
    """Fetch `avid`: report `steps` progress events the way Celery users do
    (`send_event('task-progress', ...)`), then succeed or raise."""
    for step in range(1, steps + 1):
        time.sleep(seconds / max(steps, 1))
        self.send_event("task-progress", current=step, total=steps, message=f"step {step}")
    if not steps:
        time.sleep(seconds)
    if fail:
        raise ValueError(f"cannot fetch {avid}")
    return f"fetched {avid}"


@app.task(name="plain.flaky", bind=True)
def flaky(self, avid, failures=2, user_id=None):
    """Raise `failures` times (retried at once each time), then succeed."""
    if self.request.retries < failures:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} of {avid}"),
                         countdown=0.05, max_retries=failures)
    return f"done {avid} after {self.request.retries} retries"


@app.task(name="plain.gate")
def gate(avid, key, user_id=None):
    """Succeed once the Redis key `key` (on the broker's Redis) exists."""
    client = redis.Redis.from_url(app.conf.broker_url)
    deadline = time.monotonic() + 60
    try:
        while not client.exists(key):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{key} never set")
            time.sleep(0.01)
    finally:
        client.close()
    return f"opened {avid}"
