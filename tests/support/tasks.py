"""Submitting demo tasks the way a web application would: by name, over the broker."""

import uuid
from typing import Optional

from celery import Celery


def submit(producer: Celery, avid: str, seconds: float = 0.5, fail: bool = False,
           countdown: Optional[float] = None) -> str:
    result = producer.send_task("notify_server.demo.download", args=[avid],
                                kwargs={"seconds": seconds, "fail": fail}, countdown=countdown)
    return result.id


def unique_avid(prefix: str = "T") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def submit_owned(producer: Celery, avid: str, owner: str, seconds: float = 0.5) -> str:
    """Submit a demo task owned by `owner` (its `user_id` keyword, which the
    worker writes as the events' owner and the poller reads from inspect)."""
    result = producer.send_task("notify_server.demo.download", args=[avid],
                                kwargs={"seconds": seconds, "user_id": owner})
    return result.id
