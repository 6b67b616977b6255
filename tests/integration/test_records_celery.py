"""Task records written by real Celery workers: by the worker hook
(`install(app)`, tests/support/hooked_app.py) and by the Celery event bridge
(a plain `-E` worker, tests/support/plain_app.py, and a server with
NOTIFY_CELERY_EVENTS=1). Each record is read as a client reads it, over REST
and with the socket's `get_task`, and held against the history stream.
"""

import uuid

import pytest
from celery import Celery

from notify_server.dev.embedded_redis import EmbeddedRedis
from tests.support.client import WsClient, of_task
from tests.support.http_probe import readyz
from tests.support.processes import start_server, start_worker
from tests.support.records import FINAL_TYPES, history_of, rest_record, socket_record
from tests.support.tasks import unique_avid
from tests.support.waiting import eventually


@pytest.fixture(scope="module")
def hooked():
    """(redis url, server port, producer, worker hostname): the hook's stack."""
    redis_server = EmbeddedRedis()
    redis_server.start()
    hostname = f"hooked-{uuid.uuid4().hex[:6]}@localhost"
    worker = start_worker(redis_server.url, hostname, app="tests.support.hooked_app")
    server, port = start_server(redis_server.url, name="records-hook")
    producer = Celery("records-producer", broker=redis_server.url, set_as_current=False)
    yield redis_server.url, port, producer, hostname
    producer.close()
    server.stop()
    worker.stop()
    redis_server.stop()


@pytest.fixture(scope="module")
def bridged():
    """(redis url, server port, producer, worker hostname): the bridge's stack."""
    redis_server = EmbeddedRedis()
    redis_server.start()
    hostname = f"plain-{uuid.uuid4().hex[:6]}@localhost"
    worker = start_worker(redis_server.url, hostname, app="tests.support.plain_app",
                          args=["-E"], env={"PLAIN_BROKER_URL": redis_server.url})
    server, port = start_server(redis_server.url, name="records-bridge",
                                env={"NOTIFY_CELERY_EVENTS": "1"})
    producer = Celery("records-bridge-producer", broker=redis_server.url, set_as_current=False)
    yield redis_server.url, port, producer, hostname
    producer.close()
    server.stop()
    worker.stop()
    redis_server.stop()


def revoke_then_send(producer: Celery, name: str, *args) -> str:
    """A task revoked by id before it is sent: the worker drops it on arrival."""
    task_id = str(uuid.uuid4())
    replies = producer.control.revoke(task_id, reply=True, timeout=10, limit=1)
    assert replies, "no worker acknowledged the revoke"
    producer.send_task(name, args=list(args), task_id=task_id)
    return task_id


async def finished(client: WsClient, task_id: str, final: str = None) -> dict:
    """The final event of `task_id` (of type `final` if given), received
    already or from now on."""
    def wanted(m):
        return of_task(task_id)(m) and (m["type"] == final if final else m["type"] in FINAL_TYPES)
    return next((m for m in client.received if wanted(m)), None) \
        or await client.wait_for(wanted, timeout=40)


async def both_views(port: int, client: WsClient, task_id: str) -> dict:
    """The record over REST, checked equal to the socket's `get_task` reply."""
    status, body = await rest_record(port, task_id)
    assert (status, body["code"], body["message"]) == (200, 200, "success"), body
    reply = await socket_record(client, task_id)
    assert reply == {"type": "task", "data": body["data"]}
    return body["data"]


def check_record(record: dict, history: list, *, task_id, avid, name, worker, status, message,
                 retries, types, progress=None, bridge=False) -> None:
    """Everything a record says, against what the task did and the history."""
    assert record["task_id"] == task_id
    assert (record["avid"], record["name"], record["worker"]) == (avid, name, worker)
    assert (record["status"], record["message"], record["retries"]) == (status, message, retries)
    assert record["progress"] == progress
    timeline = record["events"]
    kinds = [event["type"] for event in timeline]
    if bridge and retries:
        # Celery sends a retry's task-received (the next attempt) and the
        # task-retried of the attempt that raised from two places: either may come first.
        assert kinds[0] == "task_received" and kinds.count("task_received") == retries + 1
        assert [k for k in kinds if k != "task_received"] == [
            k for k in types if k != "task_received"]
    else:
        assert kinds == types
    assert [(event["id"], event["type"]) for event in timeline] == history
    assert record["last_id"] == timeline[-1]["id"]
    assert record["events_dropped"] == 0
    times = [event["time"] for event in timeline]
    if not bridge:  # the hook's times are one process's clock, in writing order
        assert times == sorted(times)
    received = [event["time"] for event in timeline if event["type"] == "task_received"]
    assert record["received_at"] == (received[0] if received else None)
    started = [event["time"] for event in timeline if event["type"] == "task_started"]
    assert record["started_at"] == (started[-1] if started else None)
    final = [event["time"] for event in timeline if event["type"] in FINAL_TYPES]
    assert record["finished_at"] == final[-1]
    if started:
        assert record["received_at"] is None or record["received_at"] <= record["started_at"]
        assert record["started_at"] <= record["finished_at"]
        assert 0 <= record["runtime"] < 30
        if not bridge:  # the hook's runtime is the record's own started..finished
            assert record["runtime"] == pytest.approx(
                record["finished_at"] - record["started_at"], abs=1e-5)
    else:
        assert record["runtime"] is None


async def test_the_hooks_records_show_success_failure_retries_progress_and_revoke(hooked):
    url, port, producer, hostname = hooked
    client = await WsClient.connect(port)
    await client.wait_for(lambda m: m["type"] == "queue_status")
    avids = {kind: unique_avid(kind.upper()) for kind in ("ok", "bad", "flaky", "steps", "rev")}
    ids = {kind: producer.send_task(f"hooked.{task}", args=[avids[kind]]).id
           for kind, task in (("ok", "succeed"), ("bad", "fail"), ("flaky", "flaky"),
                              ("steps", "steps"))}
    ids["rev"] = revoke_then_send(producer, "hooked.succeed", avids["rev"])
    for kind, final in (("ok", "task_completed"), ("bad", "task_failed"),
                        ("flaky", "task_completed"), ("steps", "task_completed"),
                        ("rev", "task_revoked")):
        await finished(client, ids[kind], final)

    def check(kind, **expected):
        check_record(records[kind], history_of(url, ids[kind]), task_id=ids[kind],
                     avid=avids[kind], worker=hostname, **expected)

    records = {kind: await both_views(port, client, task_id) for kind, task_id in ids.items()}
    check("ok", name="hooked.succeed", status="success", message=f"done {avids['ok']}",
          retries=0, types=["task_started", "task_completed"])
    check("bad", name="hooked.fail", status="failed",
          message=f"ValueError: cannot do {avids['bad']}", retries=0,
          types=["task_started", "task_failed"])
    check("flaky", name="hooked.flaky", status="success",
          message=f"done {avids['flaky']} after 2 retries", retries=2,
          types=["task_started", "task_retrying"] * 2 + ["task_started", "task_completed"])
    check("steps", name="hooked.steps", status="success", message=f"stepped {avids['steps']}",
          retries=0, types=["task_started"] + ["task_progress"] * 3 + ["task_completed"],
          progress={"current": 3, "total": 3, "percent": 100.0,
                    "message": f"step 3 of {avids['steps']}"})
    check("rev", name="hooked.succeed", status="revoked", message="revoked", retries=0,
          types=["task_revoked"])
    client.close()


async def test_the_bridges_records_show_success_failure_retries_progress_and_revoke(bridged):
    url, port, producer, hostname = bridged
    # The bridge writes once its server holds the lease: before, events would be lost.
    await eventually(lambda: readyz(port), lambda answer: answer[1]["leader"] is not None)
    client = await WsClient.connect(port)
    await client.wait_for(lambda m: m["type"] == "queue_status")
    avids = {kind: unique_avid(kind.upper()) for kind in ("ok", "bad", "flaky", "steps", "rev")}
    ids = {
        "ok": producer.send_task("plain.fetch", args=[avids["ok"]]).id,
        "bad": producer.send_task("plain.fetch", args=[avids["bad"]], kwargs={"fail": True}).id,
        "flaky": producer.send_task("plain.flaky", args=[avids["flaky"]]).id,
        "steps": producer.send_task("plain.fetch", args=[avids["steps"]],
                                    kwargs={"steps": 3, "seconds": 0.3}).id,
        "rev": revoke_then_send(producer, "plain.fetch", avids["rev"]),
    }
    for kind, final in (("ok", "task_completed"), ("bad", "task_failed"),
                        ("flaky", "task_completed"), ("steps", "task_completed"),
                        ("rev", "task_revoked")):
        await finished(client, ids[kind], final)

    def check(kind, **expected):
        check_record(records[kind], history_of(url, ids[kind]), task_id=ids[kind],
                     worker=hostname, bridge=True, **{"avid": avids[kind], **expected})

    records = {kind: await both_views(port, client, task_id) for kind, task_id in ids.items()}
    check("ok", name="plain.fetch", status="success", message=repr(f"fetched {avids['ok']}"),
          retries=0, types=["task_received", "task_started", "task_completed"])
    check("bad", name="plain.fetch", status="failed",
          message=f"ValueError('cannot fetch {avids['bad']}')", retries=0,
          types=["task_received", "task_started", "task_failed"])
    check("flaky", name="plain.flaky", status="success",
          message=repr(f"done {avids['flaky']} after 2 retries"), retries=2,
          types=["task_received", "task_started", "task_retrying"] * 2
          + ["task_received", "task_started", "task_completed"])
    check("steps", name="plain.fetch", status="success",
          message=repr(f"fetched {avids['steps']}"), retries=0,
          types=["task_received", "task_started"] + ["task_progress"] * 3 + ["task_completed"],
          progress={"current": 3, "total": 3, "percent": 100.0, "message": "step 3"})
    # Revoked before Celery sent task-received: the bridge never saw its
    # arguments or name, so (as documented) the subject and name are unknown.
    check("rev", avid=None, name=None, status="revoked", message="revoked", retries=0,
          types=["task_revoked"])
    flaky_received = [e["time"] for e in records["flaky"]["events"]
                      if e["type"] == "task_received"]
    assert records["flaky"]["received_at"] == flaky_received[0] < flaky_received[-1]
    client.close()
