"""The demo Celery app: `celery -A notify_server.dev.demo worker`.

Its broker and events Redis are $REDIS_URL (default redis://127.0.0.1:6379/0).
`python -m notify_server.dev.demo produce` keeps submitting demo tasks: most
succeed, some fail, a few are scheduled with a countdown; they are owned in
turn by "alice", by "bob" and by no one (the `user_id` keyword).
"""

import itertools
import logging
import os
import random
import signal
import sys
import time
from typing import Optional

from celery import Celery

from notify_server.worker import install

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

app = Celery("notify_server.dev.demo", broker=REDIS_URL)
app.conf.update(
    task_acks_late=False,
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)
notifier = install(app, REDIS_URL)
# The demo fails tasks on purpose and the dashboard shows why: keep Celery from
# printing a traceback for each of them.
logging.getLogger("celery.app.trace").setLevel(logging.CRITICAL)

STEPS = 10


@app.task(name="notify_server.demo.download")
def download(avid: str, seconds: float = 1.0, fail: bool = False,
             user_id: Optional[str] = None) -> str:
    """Pretend to download `avid` for about `seconds`, reporting progress.

    Returns a short message, or raises RuntimeError with a readable reason
    when `fail` is true (half-way through, as a real failure would).
    The body ignores `user_id`: `install` reads it as the task's owner
    (its default owner_arg) and puts it on every event of the task.
    """
    for step in range(1, STEPS + 1):
        time.sleep(seconds / STEPS)
        if fail and step == STEPS // 2:
            raise RuntimeError(f"download of {avid} failed: the source went away at {step * 10}%")
        notifier.progress(step, STEPS, f"{avid}: {step * 10}%")
    return f"{avid} downloaded"


def produce(interval: float = 1.5) -> None:
    """Submit demo tasks forever: a mix of successes, failures and countdowns,
    owned in turn by alice, bob and no one."""
    owners = itertools.cycle(["alice", "bob", None])
    for number, user_id in zip(itertools.count(1), owners):
        avid = f"DEMO-{number:03d}"
        roll = random.random()
        if roll < 0.15:
            download.apply_async((avid,), {"seconds": 2.0, "user_id": user_id}, countdown=8)
        else:
            download.delay(avid, seconds=random.uniform(1.0, 6.0), fail=roll > 0.8,
                           user_id=user_id)
        time.sleep(interval)


if __name__ == "__main__" and sys.argv[1:] == ["produce"]:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        produce()
    except KeyboardInterrupt:  # Ctrl-C reaches the whole group; run.py stops us anyway
        pass
