"""`/metrics` reflects what clients received, in Prometheus text format."""

from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import AsyncHTTPClient

from tests.support.client import WsClient, of_task
from tests.support.tasks import submit, unique_avid


async def scrape(port: int) -> dict:
    response = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{port}/metrics")
    assert response.headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            samples[key] = sample.value
    return samples


async def test_metrics_count_connections_deliveries_polls_and_redis_state(server_port, producer):
    before = await scrape(server_port)
    client = await WsClient.connect(server_port)
    task_id = submit(producer, unique_avid("MET"), seconds=0.1)
    await client.wait_for(of_task(task_id, "task_completed"))
    await client.send({"action": "ping"})
    await client.wait_for(lambda m: m["type"] == "pong")

    after = await scrape(server_port)

    def grew(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert after[("notify_open_connections", ())] >= 1
    assert grew("notify_messages_sent_total", type="task_completed") >= 1
    assert grew("notify_messages_sent_total", type="task_started") >= 1
    assert grew("notify_messages_sent_total", type="pong") == 1
    assert grew("notify_relay_lag_seconds_count") >= 2
    assert after[("notify_inspect_poll_duration_seconds_count", ())] >= 1
    assert after[("notify_redis_connected", ())] == 1
    assert after[("notify_event_loop_lag_seconds_count", ())] >= 1
    client.close()
