"""`/metrics` reflects what clients received, in Prometheus text format.

The test runs its own redis-server, worker and server: no other client or task
moves the counters, so each is checked by the exact change the test caused.
"""

from celery import Celery

from tests.support.client import WsClient, of_task
from tests.support.http_probe import scrape
from tests.support.processes import start_server, start_worker
from tests.support.tasks import submit, unique_avid
from tests.support.waiting import eventually

OPEN = ("notify_open_connections", ())
POLLS = ("notify_inspect_poll_duration_seconds_count", ())
LOOP_LAG = ("notify_event_loop_lag_seconds_count", ())
RELAYED = ("notify_relay_lag_seconds_count", ())


def sent(kind: str) -> tuple:
    return ("notify_messages_sent_total", (("type", kind),))


def change(before: dict, after: dict, key: tuple) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


async def test_metrics_count_connections_deliveries_polls_and_redis_state(make_redis):
    redis = make_redis()
    worker = start_worker(redis.url, "metrics@localhost", concurrency=1)
    server, port = start_server(redis.url, name="server-metrics")
    producer = Celery("metrics-producer", broker=redis.url, set_as_current=False)
    try:
        before = await scrape(port)
        client = await WsClient.connect(port)
        assert change(before, await scrape(port), OPEN) == 1

        task_id = submit(producer, unique_avid("MET"), seconds=0.1)
        await client.wait_for(of_task(task_id, "task_completed"))
        await client.send({"action": "ping"})
        await client.wait_for(lambda m: m["type"] == "pong")
        after = await scrape(port)

        # One task: started, ten progress reports (the demo task's steps), completed.
        assert change(before, after, sent("task_started")) == 1
        assert change(before, after, sent("task_progress")) == 10
        assert change(before, after, sent("task_completed")) == 1
        assert change(before, after, sent("pong")) == 1
        assert change(before, after, RELAYED) == 12
        assert after[("notify_redis_connected", ())] == 1
        await eventually(lambda: scrape(port), lambda now: change(before, now, POLLS) >= 1)
        await eventually(lambda: scrape(port), lambda now: change(before, now, LOOP_LAG) >= 1)

        client.close()
        await eventually(lambda: scrape(port), lambda now: change(before, now, OPEN) == 0)
    finally:
        producer.close()
        worker.stop()
        assert server.stop() == 0
