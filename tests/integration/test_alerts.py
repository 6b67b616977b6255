"""Failure alerts posted to a real local webhook by the real server process.

Each test starts its own server (or two) on a shared private redis-server,
with `NOTIFY_ALERT_WEBHOOKS` pointing at its own `AlertReceiver`, and writes
events with the real emitter (or a real Celery worker with the hook). The
receiver keeps only the posts it answered 2xx, so "posted once" is a list of
alert ids without repeats; an absence is asserted after a later marker.
"""

import re
import signal
import uuid
from typing import List

import pytest
import redis
from celery import Celery

from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.protocol import task_events as events
from notify_server.protocol.names import Keys
from notify_server.worker.emitter import Emitter
from tests.support import http_probe
from tests.support.alert_receiver import AlertReceiver
from tests.support.processes import Child, start_server, start_worker

TIMEOUT = "1"   # seconds per post: a hung receiver is given up on fast
TTL = "1"       # the lease: a killed leader is replaced within 2 s


@pytest.fixture(scope="module")
def redis_url():
    server = EmbeddedRedis()
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def receiver():
    started = AlertReceiver().start()
    yield started
    started.stop()


def alerting_server(redis_url: str, receiver: AlertReceiver, webhook: str = None,
                    name: str = "alerts", **env: str) -> "tuple[Child, int]":
    """A server posting alerts to `receiver` (`webhook` entry: its URL, plain JSON);
    returns once it leads and its sender has its start position."""
    child, port = start_server(redis_url, name=name, env={
        "NOTIFY_ALERT_WEBHOOKS": webhook or receiver.url, "NOTIFY_ALERT_TIMEOUT": TIMEOUT,
        "NOTIFY_LEADER_TTL": TTL, **env})
    wait_until_sending(child, receiver)
    return child, port


def wait_until_sending(child: Child, receiver: AlertReceiver) -> None:
    port = receiver.url.split(":")[2].split("/")[0]
    child.wait_for_line(rf"alerts to http://127\.0\.0\.1:{port}/… \(\w+\): .*sending after")


def fail(emitter: Emitter, name: str = "tests.alerts.job", message: str = "ValueError: no",
         status=events.task_failed) -> str:
    """Write one event of `name` (a new task id); returns the task id."""
    task_id = f"t-{uuid.uuid4().hex[:10]}"
    emitter.emit(status(task_id, "A-1", message), record={"name": name} if name else None)
    return task_id


def flushed(emitter: Emitter) -> None:
    assert emitter.flush(timeout=10)


def alerted_tasks(posts) -> List[str]:
    return [post.body["task_id"] for post in posts]


def history_ids(redis_url: str, task_ids: List[str]) -> List[str]:
    """The stream ids of these tasks' events, in stream order."""
    wanted = set(task_ids)
    client = redis.Redis.from_url(redis_url)
    try:
        return [entry_id.decode() for entry_id, fields in
                client.xrange(Keys().history_stream, "-", "+")
                if re.search(rb'"task_id":"([^"]+)"', fields[b"event"]).group(1).decode() in wanted]
    finally:
        client.close()


def metric(port: int, name: str, **labels: str) -> float:
    body = http_probe.get(port, "/metrics").body.decode()
    shown = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    match = re.search(rf"^{name}{{{shown}}} (\S+)$" if labels else rf"^{name} (\S+)$", body,
                      re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_failed_celery_task_posts_to_slack_once(redis_url, receiver):
    hostname = f"alerts-{uuid.uuid4().hex[:6]}@localhost"
    worker = start_worker(redis_url, hostname, app="tests.support.hooked_app")
    producer = Celery("alerts-producer", broker=redis_url, set_as_current=False)
    server, _ = alerting_server(redis_url, receiver, webhook=f"slack={receiver.url}")
    try:
        avid = f"S-{uuid.uuid4().hex[:6]}"
        task_id = producer.send_task("hooked.fail", args=[avid]).id
        [post] = receiver.wait_for_posts(1, timeout=40)
        text = f"Task hooked.fail ({task_id}) failed: ValueError: cannot do {avid}"
        [alert_id] = history_ids(redis_url, [task_id])[-1:]
        assert post.alert_id == alert_id
        assert post.body == {"text": text, "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [
                {"type": "mrkdwn", "text": f"id `{alert_id}` · worker {hostname}"}]}]}
        marker = fail(Emitter(redis_url), name="tests.alerts.marker")
        posts = receiver.wait_for_posts(2)
        assert [p.body["text"].split("(")[1].split(")")[0] for p in posts] == [task_id, marker]
    finally:
        server.stop()
        producer.close()
        worker.stop()


def test_failures_while_the_receiver_fails_are_posted_once_in_order_once_it_recovers(
        redis_url, receiver):
    server, port = alerting_server(redis_url, receiver)
    try:
        emitter = Emitter(redis_url)
        receiver.fail()
        failed = [fail(emitter) for _ in range(5)]
        flushed(emitter)
        receiver.wait_for_attempts(3)  # the first alert, tried and retried
        assert receiver.posts == []
        receiver.recover()
        failed.append(fail(emitter, name="tests.alerts.marker"))
        posts = receiver.wait_for_posts(6)
        assert alerted_tasks(posts) == failed
        assert [post.alert_id for post in posts] == [post.body["id"] for post in posts] \
            == history_ids(redis_url, failed)
        assert posts[0].body["text"] == f"Task tests.alerts.job ({failed[0]}) failed: " \
            "ValueError: no"
        assert metric(port, "notify_alerts_failed_total") >= 2
        assert metric(port, "notify_alerts_sent_total", format="json") == 6
        assert receiver.secret not in "".join(server.output)
        assert "alerts to http://127.0.0.1:" in "".join(server.output)
    finally:
        server.stop()


def test_each_webhook_gets_every_alert_and_a_failing_one_holds_up_only_itself(redis_url,
                                                                              receiver):
    other = AlertReceiver().start()
    try:
        server, _ = alerting_server(redis_url, receiver,
                                    webhook=f"{receiver.url},slack={other.url}")
        wait_until_sending(server, other)
        try:
            emitter = Emitter(redis_url)
            receiver.fail()
            failed = [fail(emitter) for _ in range(2)]
            flushed(emitter)
            slack = other.wait_for_posts(2)
            assert [post.body["text"].split("(")[1].split(")")[0] for post in slack] == failed
            receiver.wait_for_attempts(2)
            receiver.recover()
            assert alerted_tasks(receiver.wait_for_posts(2)) == failed
            assert [post.alert_id for post in receiver.posts] == [post.alert_id for post in slack]
        finally:
            server.stop()
    finally:
        other.stop()


def test_a_post_the_webhook_rejects_is_dropped_once_and_the_next_goes_on(redis_url, receiver):
    server, port = alerting_server(redis_url, receiver)
    try:
        emitter = Emitter(redis_url)
        receiver.reject()
        rejected = fail(emitter)
        flushed(emitter)
        receiver.wait_for_attempts(1)
        receiver.recover()
        marker = fail(emitter, name="tests.alerts.marker")
        assert alerted_tasks(receiver.wait_for_posts(1)) == [marker]
        assert alerted_tasks(receiver.rejected) == [rejected]  # tried once, not retried
        assert metric(port, "notify_alerts_dropped_total", reason="http_404") == 1
        server.wait_for_line(r"alerts to http://127\.0\.0\.1:\d+/…: HTTP 404 for alert "
                             r"\d+-\d+; not retried, dropped")
        assert receiver.secret not in "".join(server.output)
    finally:
        server.stop()


def test_a_history_trimmed_past_the_position_is_reported_as_a_gap_then_alerts_go_on(
        redis_url, receiver):
    server, _ = alerting_server(redis_url, receiver, name="alerts-before-gap")
    emitter = Emitter(redis_url)
    first = fail(emitter)
    kept = receiver.wait_for_posts(1)[0].alert_id
    server.stop()
    trimming = Emitter(redis_url, history_maxlen=100)
    lost = fail(trimming)
    for _ in range(600):  # trims the history (about 100 kept) past the kept position
        fail(trimming, status=events.task_completed)
    after = [fail(trimming) for _ in range(2)]
    flushed(trimming)
    server, _ = start_server(redis_url, name="alerts-after-gap", env={
        "NOTIFY_ALERT_WEBHOOKS": receiver.url, "NOTIFY_ALERT_TIMEOUT": TIMEOUT})
    try:
        marker = fail(emitter, name="tests.alerts.marker")
        posts = receiver.wait_for_posts(5)
        gap = posts[1].body
        assert alerted_tasks(posts[:1]) == [first] and lost not in str(posts)
        assert gap["kind"] == "alert_gap" and gap["after_id"] == kept
        assert gap["text"].startswith("Alerts may have been missed between ")
        assert posts[1].alert_id == f"gap:{kept}..{gap['before_id']}"
        assert alerted_tasks(posts[2:]) == [*after, marker]
        server.wait_for_line(r"alerts may have been missed before")
    finally:
        server.stop()


def test_a_hanging_receiver_is_timed_out_and_retried_and_nothing_is_doubled(redis_url, receiver):
    server, port = alerting_server(redis_url, receiver)
    try:
        emitter = Emitter(redis_url)
        receiver.hang()
        failed = [fail(emitter) for _ in range(3)]
        flushed(emitter)
        receiver.wait_until_hung(2)  # the first post timed out and came again
        assert http_probe.get(port, "/healthz").status == 200  # the loop serves meanwhile
        receiver.recover()
        failed.append(fail(emitter, name="tests.alerts.marker"))
        assert alerted_tasks(receiver.wait_for_posts(4)) == failed
        assert receiver.secret not in "".join(server.output)
    finally:
        server.stop()


def test_a_storm_gives_the_budget_in_posts_then_summaries_that_count_the_rest(
        redis_url, receiver):
    server, port = alerting_server(redis_url, receiver, NOTIFY_ALERT_PER_MINUTE="5")
    try:
        emitter = Emitter(redis_url)
        failed = [fail(emitter, name=f"tests.storm.{n % 2}") for n in range(200)]
        flushed(emitter)
        ids = history_ids(redis_url, failed)
        posts = receiver.wait_for_posts(6, timeout=40)  # the budget refills one in 12 s
        while sum(post.body.get("count", 1) for post in posts) < 200:
            posts = receiver.wait_for_posts(len(posts) + 1, timeout=40)
        singles, summaries = posts[:5], posts[5:]
        assert alerted_tasks(singles) == failed[:5]
        assert all(post.body["kind"] == "alert_summary" for post in summaries)
        assert sum(post.body["count"] for post in summaries) == 195
        # Contiguous: each summary starts right after what came before it.
        covered = ids[:5]
        for summary in summaries:
            start = ids.index(summary.body["first_id"])
            assert start == len(covered)
            covered = ids[:ids.index(summary.body["last_id"]) + 1]
            assert summary.alert_id == f"{summary.body['first_id']}..{summary.body['last_id']}"
        assert covered == ids
        assert sum(sum(post.body["names"].values()) for post in summaries) == 195
        assert metric(port, "notify_alerts_summarised_total") == 195
    finally:
        server.stop()


def test_only_the_listed_statuses_and_task_names_are_alerted(redis_url, receiver):
    server, _ = alerting_server(redis_url, receiver, NOTIFY_ALERT_STATUSES="failed,revoked",
                                NOTIFY_ALERT_TASKS="billing.*,tests.alerts.marker")
    try:
        emitter = Emitter(redis_url)
        fail(emitter, name="reports.daily")                     # another name
        fail(emitter, name="billing.charge", status=events.task_retrying)  # another status
        fail(emitter, name=None)                                # no name
        revoked = fail(emitter, name="billing.refund", status=events.task_revoked)
        marker = fail(emitter, name="tests.alerts.marker")
        flushed(emitter)
        posts = receiver.wait_for_posts(2)
        assert alerted_tasks(posts) == [revoked, marker]
        assert posts[0].body["type"] == "task_revoked"
        extra = fail(emitter, name="billing.charge")
        assert alerted_tasks(receiver.wait_for_posts(3)) == [revoked, marker, extra]
    finally:
        server.stop()


def test_a_restart_resumes_from_the_kept_position(redis_url, receiver):
    server, _ = alerting_server(redis_url, receiver, name="alerts-first")
    emitter = Emitter(redis_url)
    first = fail(emitter)
    receiver.wait_for_posts(1)
    server.stop()
    while_down = [fail(emitter) for _ in range(3)]
    flushed(emitter)
    server, _ = start_server(redis_url, name="alerts-again", env={
        "NOTIFY_ALERT_WEBHOOKS": receiver.url, "NOTIFY_ALERT_TIMEOUT": TIMEOUT})
    try:
        server.wait_for_line(r"sending after the kept position")
        marker = fail(emitter, name="tests.alerts.marker")
        assert alerted_tasks(receiver.wait_for_posts(5)) == [first, *while_down, marker]
    finally:
        server.stop()


def test_a_leader_killed_mid_post_is_replaced_and_every_failure_is_posted_once_in_order(
        redis_url, receiver):
    env = {"NOTIFY_ALERT_WEBHOOKS": receiver.url, "NOTIFY_ALERT_TIMEOUT": "30",
           "NOTIFY_LEADER_TTL": TTL}
    # The first to start leads: it has its position before the second starts.
    leader = start_server(redis_url, name="alerts-leader", env=env)[0]
    members = [leader]
    try:
        wait_until_sending(leader, receiver)
        follower = start_server(redis_url, name="alerts-follower", env=env)[0]
        members.append(follower)
        emitter = Emitter(redis_url)
        first = fail(emitter)
        receiver.wait_for_posts(1)
        receiver.hang()
        failed = [fail(emitter) for _ in range(5)]
        flushed(emitter)
        receiver.wait_until_hung(1)  # the leader's post of failed[0] is held: in flight
        leader.signal(signal.SIGKILL)
        leader.wait(timeout=10)
        receiver.recover()  # the held post is closed unanswered: never delivered
        wait_until_sending(follower, receiver)
        marker = fail(emitter, name="tests.alerts.marker")
        assert alerted_tasks(receiver.wait_for_posts(7)) == [first, *failed, marker]
        assert receiver.hung == 1
    finally:
        for member in members:
            member.stop()
