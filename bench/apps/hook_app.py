"""The Celery app of bench/hook.py's worker: one no-op task, with or without the hook.

Not a module of the `bench` package: the worker imports it as `hook_app`
with this directory first on PYTHONPATH and the checkout under test
(`--root`) second, so `notify_server` comes from that checkout.

    BENCH_BROKER_URL   the broker; also the Redis the hook writes to
    BENCH_HOOK=1       install(app): the worker hook under test (else no hook)
    BENCH_COUNTER      the key each task INCRs (the completion count)
    BENCH_TASKS        the number of tasks queued: the last one stamps its time

Every variant's task does the same work: INCR the counter (one round trip),
and the first and the last task SET the time they ran. No result backend.
"""

import os
import time

import redis
from celery import Celery

BROKER_URL = os.environ["BENCH_BROKER_URL"]
COUNTER = os.environ.get("BENCH_COUNTER", "bench:hook:done")
TASKS = int(os.environ.get("BENCH_TASKS", "0"))

app = Celery("hook_app", broker=BROKER_URL)
app.conf.update(task_ignore_result=True, result_backend=None,
                broker_connection_retry_on_startup=True)

if os.environ.get("BENCH_HOOK") == "1":
    from notify_server.worker import install
    notifier = install(app, BROKER_URL)

_client = None


def client() -> redis.Redis:
    """This process's connection (made on first use: after the pool's fork)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(BROKER_URL)
    return _client


@app.task(name="hook_app.noop")
def noop(avid, user_id=None):
    done = client().incr(COUNTER)
    if done == 1 or done == TASKS:
        client().set(f"{COUNTER}:at:{done}", repr(time.time()))
