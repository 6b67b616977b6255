"""The worker hook's writer thread on real Celery workers (prefork): every
event of every task reaches the history once and in the task's order, also
when each pool child is recycled after one task and when Redis dies in the
middle of a burst (docs/protocol.md section 4, "What written means").

The hook queues each event and a thread of each pool child writes them in
pipelined batches; these tests read what reached Redis, as the server does.
"""

import uuid
from typing import Dict, List

import orjson
import psutil
import redis
from celery import Celery

from notify_server.protocol.names import Keys
from tests.support.processes import start_worker

STEPS = 3
# The worker's log line for each task that succeeded.
SUCCEEDED = r"Task hooked\.steps\[.*\] succeeded"
# A `hooked.steps` task's events, in order: started, one progress per step, completed.
ONE_TASK = ["task_started"] + [f"task_progress {n}" for n in range(1, STEPS + 1)] + [
    "task_completed"]


def by_task(url: str) -> Dict[str, List[str]]:
    """Each task's events in the history, in stream order (progress with its step)."""
    tasks: Dict[str, List[str]] = {}
    for _, fields in redis.Redis.from_url(url).xrange(Keys().history_stream):
        event = orjson.loads(fields[b"event"])
        data = event["data"]
        step = f" {data['current']}" if event["type"] == "task_progress" else ""
        tasks.setdefault(data["task_id"], []).append(event["type"] + step)
    return tasks


def wait_until_completed(url: str, task_ids: List[str], timeout: float = 60.0) -> None:
    """Block (XREAD) until every one of `task_ids` has its task_completed in the history."""
    client = redis.Redis.from_url(url, socket_timeout=timeout + 5)
    waiting, cursor = set(task_ids), "0-0"
    while waiting:
        reply = client.xread({Keys().history_stream: cursor}, block=int(timeout * 1000))
        assert reply, f"{len(waiting)} of {len(task_ids)} tasks never completed in the history"
        for entry_id, fields in reply[0][1]:
            cursor = entry_id
            event = orjson.loads(fields[b"event"])
            if event["type"] == "task_completed":
                waiting.discard(event["data"]["task_id"])
    client.close()


def send_steps(broker_url: str, count: int) -> List[str]:
    producer = Celery("hook-writer-producer", broker=broker_url, set_as_current=False)
    try:
        return [producer.send_task("hooked.steps", args=[f"W-{n}"], kwargs={"count": STEPS}).id
                for n in range(count)]
    finally:
        producer.close()


def assert_every_task_whole_and_in_order(url: str, task_ids: List[str]) -> None:
    tasks = by_task(url)
    wrong = {task_id: tasks.get(task_id) for task_id in task_ids
             if tasks.get(task_id) != ONE_TASK}
    assert not wrong, f"{len(wrong)} of {len(task_ids)} tasks not {ONE_TASK}: " \
                      f"{list(wrong.items())[:3]}"


def worker_for(broker_url: str, events_url: str, *args: str, env: Dict[str, str] = None):
    return start_worker(broker_url, f"writer-{uuid.uuid4().hex[:6]}@localhost",
                        app="tests.support.hooked_app", args=args,
                        env={"NOTIFY_REDIS_URL": events_url, **(env or {})})


def test_a_burst_on_a_prefork_worker_writes_every_event_once_in_each_tasks_order(make_redis):
    server = make_redis()
    worker = worker_for(server.url, server.url)
    try:
        task_ids = send_steps(server.url, 300)
        wait_until_completed(server.url, task_ids)
        assert_every_task_whole_and_in_order(server.url, task_ids)
    finally:
        assert worker.stop() == 0


def test_children_recycled_after_every_task_write_every_event_before_they_exit(make_redis):
    """`--max-tasks-per-child=1`: each child leaves right after its task's
    task_completed is queued; it writes it first (worker_process_shutdown)."""
    server = make_redis()
    worker = worker_for(server.url, server.url, "--max-tasks-per-child", "1")
    try:
        task_ids = send_steps(server.url, 40)
        wait_until_completed(server.url, task_ids)
        assert_every_task_whole_and_in_order(server.url, task_ids)
    finally:
        assert worker.stop() == 0


def test_redis_killed_mid_burst_then_restarted_gets_every_event_in_order(make_redis):
    """The events' Redis (not the broker) dies while tasks run; the children
    buffer; once it is back every task's events are there, in order, once,
    and the outage is logged with what was dropped (nothing)."""
    broker = make_redis()
    events = make_redis(appendonly=True)
    worker = worker_for(broker.url, events.url, "--concurrency", "1")
    try:
        first = send_steps(broker.url, 5)
        wait_until_completed(events.url, first)
        events.kill()
        during = send_steps(broker.url, 60)
        worker.wait_for_lines(SUCCEEDED, len(first + during))  # these ran with Redis down
        worker.wait_for_line("cannot write task events to Redis")
        events.start()
        wait_until_completed(events.url, during)
        assert_every_task_whole_and_in_order(events.url, first + during)
        assert "(0 dropped)" in worker.wait_for_line(r"Redis is back after .*").group(0)
    finally:
        assert worker.stop() == 0


def test_what_a_full_buffer_drops_during_an_outage_is_counted_and_logged(make_redis):
    """NOTIFY_EMIT_BUFFER=10: of 20 tasks' 100 events written while Redis is
    down, the newest 10 arrive, in order; the log says 90 were dropped."""
    broker = make_redis()
    events = make_redis(appendonly=True)
    worker = worker_for(broker.url, events.url, "--concurrency", "1",
                        env={"NOTIFY_EMIT_BUFFER": "10"})
    try:
        marker = send_steps(broker.url, 1)
        wait_until_completed(events.url, marker)
        events.kill()
        during = send_steps(broker.url, 20)
        worker.wait_for_lines(SUCCEEDED, len(marker + during))
        worker.wait_for_line("buffer of 10 is full")
        events.start()
        wait_until_completed(events.url, during[-2:])
        kept = [f"{task_id} {kind}" for task_id in during for kind in by_task(events.url).get(
            task_id, [])]
        assert kept == [f"{task_id} {kind}" for task_id in during for kind in ONE_TASK][-10:]
        assert "(90 dropped)" in worker.wait_for_line(r"Redis is back after .*").group(0)
    finally:
        assert worker.stop() == 0


def test_a_pool_child_killed_mid_task_is_reported_and_its_replacement_writes_every_event(
        make_redis):
    """SIGKILL a child while its task runs: the parent reports the task
    failed (WorkerLostError), and the child Celery forks in its place, while
    the parent's writer thread is busy with that report, writes every event
    of the tasks it runs next (before the fix it could hang for good on a
    lock of the parent's Redis client held at the fork)."""
    server = make_redis()
    worker = worker_for(server.url, server.url, "--concurrency", "1")
    producer = Celery("hook-writer-kill", broker=server.url, set_as_current=False)
    try:
        key = f"never-{uuid.uuid4().hex}"
        victim = producer.send_task("hooked.gate", args=["KILLED", key]).id
        wait_until_started(server.url, victim)
        [child] = psutil.Process(worker.process.pid).children()
        child.kill()
        failed = wait_for_event(server.url, victim, "task_failed")
        assert "WorkerLostError" in failed["data"]["message"]
        after = send_steps(server.url, 12)
        wait_until_completed(server.url, after, timeout=30)
        assert_every_task_whole_and_in_order(server.url, after)
    finally:
        producer.close()
        assert worker.stop() == 0


def wait_for_event(url: str, task_id: str, kind: str, timeout: float = 30.0) -> dict:
    """The first event of `kind` of `task_id` in the history, waiting (XREAD) for it."""
    client = redis.Redis.from_url(url, socket_timeout=timeout + 5)
    cursor = "0-0"
    try:
        while True:
            reply = client.xread({Keys().history_stream: cursor}, block=int(timeout * 1000))
            assert reply, f"no {kind} of {task_id} within {timeout} s"
            for entry_id, fields in reply[0][1]:
                cursor = entry_id
                event = orjson.loads(fields[b"event"])
                if event["type"] == kind and event["data"]["task_id"] == task_id:
                    return event
    finally:
        client.close()


def wait_until_started(url: str, task_id: str) -> None:
    wait_for_event(url, task_id, "task_started")
