"""A task's owner as real Celery workers write it to Redis: a top-level "owner" of
the event JSON in the history stream and on the live channel, never inside "data".

Read straight from Redis with redis-py, as the server (or any other reader) does.
"""

import json
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis

from notify_server.protocol.names import Keys
from tests.support.processes import Child
from tests.support.tasks import unique_avid

HISTORY, CHANNEL = Keys().history_stream, Keys().events_channel
DEMO_TASK = "notify_server.demo.download"
FINAL = {"task_completed", "task_failed"}

# A user's app whose tasks are owned by the account they work for (install's `owner`).
OWNER_FUNCTION_APP = '''\
import os

from celery import Celery
from notify_server.worker import install

app = Celery("ownerfunction", broker=os.environ["REDIS_URL"])


def account_login(args, kwargs):
    return kwargs["account"]["login"]          # KeyError for a task with no account


notifier = install(app, owner=account_login)


@app.task(name="ownerfunction.bill")
def bill(avid, account=None, user_id=None):
    notifier.progress(1, 2, "halfway")
    return f"billed {avid}"
'''

# A user's app with the plain `install(app)`; its worker runs with NOTIFY_OWNER_ARG=customer.
OWNER_ARG_APP = '''\
import os

from celery import Celery
from notify_server.worker import install

app = Celery("ownerarg", broker=os.environ["REDIS_URL"])
install(app)


@app.task(name="ownerarg.ship")
def ship(avid, customer=None, user_id=None):
    return f"shipped {avid}"
'''


def events_of(redis_url: str, task_id: str, timeout: float = 30.0) -> list:
    """The history stream's events of `task_id`, in order, once its final event is in."""
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + timeout
    try:
        while True:
            found = [json.loads(fields[b"event"]) for _, fields in client.xrange(HISTORY)]
            found = [event for event in found if event["data"].get("task_id") == task_id]
            if any(event["type"] in FINAL for event in found):
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"no final event of {task_id} within {timeout} s: {found}")
            time.sleep(0.05)
    finally:
        client.close()


def user_app_worker(tmp_path: Path, redis_url: str, module: str, source: str,
                    env: dict) -> "tuple[Child, str]":
    """A prefork worker of `source` (imported as `module` from tmp_path) on a queue
    of its own, so the session's demo worker never takes its tasks."""
    (tmp_path / f"{module}.py").write_text(source)
    queue = f"{module}-{uuid.uuid4().hex[:6]}"
    child = Child(f"worker-{module}",
                  [sys.executable, "-u", "-m", "celery", "--workdir", str(tmp_path),
                   "-A", module, "worker", "--loglevel", "INFO", "--concurrency", "1",
                   "--queues", queue, "--hostname", f"{queue}@localhost",
                   "--without-gossip", "--without-mingle"],
                  env={"REDIS_URL": redis_url, "NOTIFY_REDIS_URL": "", **env})
    try:
        child.wait_for_line(r"ready\.", timeout=60)
    except BaseException:
        child.stop()
        raise
    return child, queue


@pytest.fixture(scope="module")
def owner_function_worker(tmp_path_factory, redis_server):
    child, queue = user_app_worker(tmp_path_factory.mktemp("ownerfunction"), redis_server.url,
                                   "ownerfunction", OWNER_FUNCTION_APP,
                                   {"NOTIFY_OWNER_ARG": ""})
    yield child, queue
    child.stop()


@pytest.fixture(scope="module")
def owner_arg_worker(tmp_path_factory, redis_server):
    child, queue = user_app_worker(tmp_path_factory.mktemp("ownerarg"), redis_server.url,
                                   "ownerarg", OWNER_ARG_APP, {"NOTIFY_OWNER_ARG": "customer"})
    yield child, queue
    child.stop()


def test_every_event_of_a_task_sent_with_user_id_has_that_top_level_owner(
        worker, producer, redis_server):
    task_id = producer.send_task(DEMO_TASK, args=[unique_avid("OWN")],
                                 kwargs={"seconds": 0.2, "user_id": "alice"}).id

    stored = events_of(redis_server.url, task_id)

    assert [e["type"] for e in stored] == ["task_started", *["task_progress"] * 10,
                                           "task_completed"]
    assert all(e["owner"] == "alice" for e in stored)
    assert all("owner" not in e["data"] for e in stored)
    # Beside them only the emit script's "meta" for the metrics (docs/protocol.md 6.1).
    assert all(list(e) == ["type", "data", "owner", "meta"] for e in stored)
    assert all(e["meta"]["name"] == DEMO_TASK for e in stored)


def test_events_of_a_task_without_user_id_have_no_owner(worker, producer, redis_server):
    task_id = producer.send_task(DEMO_TASK, args=[unique_avid("NOONE")],
                                 kwargs={"seconds": 0.1}).id
    none_id = producer.send_task(DEMO_TASK, args=[unique_avid("NONE")],
                                 kwargs={"seconds": 0.1, "user_id": None}).id

    for stored in (events_of(redis_server.url, task_id), events_of(redis_server.url, none_id)):
        assert stored[-1]["type"] == "task_completed"
        assert all(list(e) == ["type", "data", "meta"] for e in stored)
        assert all("owner" not in e["data"] for e in stored)


def test_a_numeric_user_id_is_written_as_its_string_also_on_failure(
        worker, producer, redis_server):
    task_id = producer.send_task(DEMO_TASK, args=[unique_avid("NUM")],
                                 kwargs={"seconds": 0.2, "fail": True, "user_id": 42}).id

    stored = events_of(redis_server.url, task_id)

    assert stored[-1]["type"] == "task_failed"
    assert {e["owner"] for e in stored} == {"42"}


def test_live_channel_message_is_valid_json_with_id_and_top_level_owner(
        worker, producer, redis_server):
    client = redis.Redis.from_url(redis_server.url)
    subscription = client.pubsub(ignore_subscribe_messages=True)
    subscription.subscribe(CHANNEL)
    subscription.get_message(timeout=1.0)  # the subscribe confirmation
    try:
        task_id = producer.send_task(DEMO_TASK, args=[unique_avid("LIVE")],
                                     kwargs={"seconds": 0.1, "user_id": "alice"}).id
        deadline, live = time.monotonic() + 30, []
        while not any(m["type"] == "task_completed" for m in live):
            assert time.monotonic() < deadline, f"no task_completed of {task_id}: {live}"
            message = subscription.get_message(timeout=0.5)
            if message is not None:
                event = json.loads(message["data"])
                if event["data"].get("task_id") == task_id:
                    live.append(event)
        stored_ids = [entry_id.decode() for entry_id, _ in client.xrange(HISTORY)]
    finally:
        subscription.close()
        client.close()

    assert all(list(m) == ["id", "type", "data", "owner", "meta"] for m in live)
    assert {m["owner"] for m in live} == {"alice"}
    assert all(m["id"] in stored_ids for m in live)


def test_owner_function_of_install_decides_the_owner_over_user_id(
        owner_function_worker, producer, redis_server):
    _, queue = owner_function_worker
    task_id = producer.send_task("ownerfunction.bill", args=[unique_avid("BILL")],
                                 kwargs={"account": {"login": "carol"}, "user_id": "alice"},
                                 queue=queue).id
    number_id = producer.send_task("ownerfunction.bill", args=[unique_avid("BILL")],
                                   kwargs={"account": {"login": 7}}, queue=queue).id

    stored = events_of(redis_server.url, task_id)
    numbered = events_of(redis_server.url, number_id)

    assert [e["type"] for e in stored] == ["task_started", "task_progress", "task_completed"]
    assert {e["owner"] for e in stored} == {"carol"}
    assert all("owner" not in e["data"] for e in stored)
    assert {e["owner"] for e in numbered} == {"7"}


def test_owner_function_that_raises_leaves_the_task_running_and_its_events_unowned(
        owner_function_worker, producer, redis_server):
    child, queue = owner_function_worker
    avid = unique_avid("NOACCOUNT")
    task_id = producer.send_task("ownerfunction.bill", args=[avid],
                                 kwargs={"user_id": "alice"}, queue=queue).id

    stored = events_of(redis_server.url, task_id)

    assert [e["type"] for e in stored] == ["task_started", "task_progress", "task_completed"]
    assert stored[-1]["data"]["message"] == f"billed {avid}"
    assert all("owner" not in e for e in stored)
    child.wait_for_line(r"WARNING.*owner\(args, kwargs\) raised KeyError\('account'\)")


def test_notify_owner_arg_names_the_owner_keyword(owner_arg_worker, producer, redis_server):
    _, queue = owner_arg_worker
    task_id = producer.send_task("ownerarg.ship", args=[unique_avid("SHIP")],
                                 kwargs={"customer": "dave", "user_id": "alice"},
                                 queue=queue).id
    other_id = producer.send_task("ownerarg.ship", args=[unique_avid("SHIP")],
                                  kwargs={"user_id": "alice"}, queue=queue).id

    assert {e["owner"] for e in events_of(redis_server.url, task_id)} == {"dave"}
    assert all("owner" not in e for e in events_of(redis_server.url, other_id))
