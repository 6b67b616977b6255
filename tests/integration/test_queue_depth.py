"""Queue depths (`queue_status.queues`) from a real Redis broker, real Celery
workers and the server, and kombu's key naming read back as kombu wrote it.

Each test has its own redis-server, so no other test's tasks or workers count.
"""

import asyncio
import json
import uuid
from typing import Optional

import redis
from celery import Celery
from tornado.httpclient import AsyncHTTPClient

from notify_server.celery_io.broker import broker_app
from notify_server.celery_io.inspect_helper import read_depths
from tests.support.client import WsClient, queue_status_where
from tests.support.processes import start_server, start_worker
from tests.support.tasks import unique_avid

DEMO_TASK = "notify_server.demo.download"


def producer_for(redis_url: str, transport_options: Optional[dict] = None) -> Celery:
    app = Celery("depth-producer", broker=redis_url, set_as_current=False)
    app.conf.broker_transport_options = transport_options or {}
    return app


def send(producer: Celery, queue: str, priority: Optional[int] = None) -> None:
    producer.send_task(DEMO_TASK, args=[unique_avid("DEPTH")], kwargs={"seconds": 0.2},
                       queue=queue, priority=priority)


def waiting_in(queue: str, count: int):
    return queue_status_where(lambda data: {"name": queue, "waiting": count} in data["queues"])


def unique_queue() -> str:
    return f"depth-{uuid.uuid4().hex[:8]}"


async def test_waiting_counts_the_tasks_no_worker_took_priorities_included_until_drained(
        make_redis):
    broker = make_redis()
    queue = unique_queue()
    # A worker on Celery's default queue only: the polls succeed, nobody takes `queue`.
    default_worker = start_worker(broker.url, f"default-{queue}@localhost")
    server, port = start_server(broker.url, env={"NOTIFY_QUEUES": f"celery,{queue}"})
    client = await WsClient.connect(port)
    producer = producer_for(broker.url)

    for priority in (None, None, 5, None, None):
        send(producer, queue, priority)

    status = await client.wait_for(waiting_in(queue, 5))
    assert status["data"]["queues"] == [{"name": "celery", "waiting": 0},
                                        {"name": queue, "waiting": 5}]

    consumer = await asyncio.get_running_loop().run_in_executor(
        None, lambda: start_worker(broker.url, f"consumer-{queue}@localhost", queues=[queue]))
    status = await client.wait_for(waiting_in(queue, 0))
    assert status["data"]["stale"] is False
    client.close()
    producer.close()
    for child in (server, consumer, default_worker):
        child.stop()


async def test_a_queue_a_worker_consumes_is_listed_without_being_configured(make_redis):
    broker = make_redis()
    queue = unique_queue()
    worker = start_worker(broker.url, f"only-{queue}@localhost", queues=[queue])
    server, port = start_server(broker.url)
    client = await WsClient.connect(port)

    status = await client.wait_for(waiting_in(queue, 0))
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/api/tasks/queue/status")

    assert status["data"]["queues"] == [{"name": "celery", "waiting": 0},
                                        {"name": queue, "waiting": 0}]
    assert {"name": queue, "waiting": 0} in json.loads(response.body)["data"]["queues"]
    client.close()
    for child in (server, worker):
        child.stop()


def test_depths_count_the_keys_kombu_writes_with_a_key_prefix_priority_steps_and_separator(
        make_redis):
    broker = make_redis()
    options = {"global_keyprefix": "app:", "priority_steps": list(range(10)), "sep": ":"}
    producer = producer_for(broker.url, options)
    for priority in (None, 4, 9):
        send(producer, "video", priority)
    producer.close()
    keys = {key.decode() for key in redis.Redis.from_url(broker.url).keys("*video*")}

    depths = read_depths(broker_app(broker.url, transport_options=options, fail_fast=True),
                         ["video", "empty"])
    unprefixed = read_depths(broker_app(broker.url, fail_fast=True), ["video"])

    assert {"app:video", "app:video:4", "app:video:9"} <= keys  # what kombu wrote
    assert depths == {"video": 3, "empty": 0}
    assert unprefixed == {"video": 0}  # the workers' options matter


def test_depths_count_kombus_default_priority_keys(make_redis):
    broker = make_redis()
    producer = producer_for(broker.url)
    for priority in (None, 4, 7, 9):
        send(producer, "video", priority)
    producer.close()
    keys = {key.decode() for key in redis.Redis.from_url(broker.url).keys("video*")}

    depths = read_depths(broker_app(broker.url, fail_fast=True), ["video"])

    assert keys == {"video", "video\x06\x163", "video\x06\x166", "video\x06\x169"}
    assert depths == {"video": 4}


def test_a_key_that_is_not_a_list_gives_an_unknown_depth_for_that_queue_only(make_redis):
    broker = make_redis()
    redis.Redis.from_url(broker.url).set("notalist", "x")
    producer = producer_for(broker.url)
    send(producer, "video")
    producer.close()

    assert read_depths(broker_app(broker.url, fail_fast=True), ["notalist", "video"]) == {
        "notalist": None, "video": 1}


async def test_waiting_is_counted_while_no_worker_at_all_is_there(make_redis):
    broker = make_redis()
    queue = unique_queue()
    server, port = start_server(broker.url, env={"NOTIFY_QUEUES": queue})
    client = await WsClient.connect(port)
    producer = producer_for(broker.url)

    for priority in (None, 9, None):
        send(producer, queue, priority)

    # The lists are stale (no worker answers inspect); the depths are current.
    status = await client.wait_for(waiting_in(queue, 3))
    assert status["data"]["stale"] is True
    assert status["data"]["workers"] == [] and status["data"]["active_tasks"] == []
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/api/tasks/queue/status")
    body = json.loads(response.body)
    assert response.code == 200 and body["message"].startswith("stale: ")
    assert body["data"]["updated_at"] is None
    assert {"name": queue, "waiting": 3} in body["data"]["queues"]
    client.close()
    producer.close()
    server.stop()
