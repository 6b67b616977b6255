"""What a relayed event and the queue snapshot count as under celery-exporter's names:
the pure rules of `notify_server.celery_metrics`, and the counters `Metrics` keeps from them."""

from prometheus_client.parser import text_string_to_metric_families

from notify_server.celery_metrics import (OTHER, UNKNOWN, Counted, TaskCounter, exception_of,
                                          hostname_of, queue_lengths, worker_gauges)
from notify_server.config import MetricsConfig
from notify_server.metrics import Metrics
from notify_server.protocol.stream import Event, parse_event


def event(kind: str, message: str = "", **meta) -> Event:
    return Event(type=kind, data={"task_id": "t-1", "avid": None, "status": "x",
                                  "message": message}, meta=meta or None)


def test_each_lifecycle_type_counts_as_its_celery_exporter_state_by_name():
    counter = TaskCounter(hostname_label=False)
    states = {kind: counter.count(event(kind, name="tasks.add")).state for kind in (
        "task_received", "task_started", "task_completed", "task_retrying", "task_revoked",
        "task_rejected")}
    assert states == {"task_received": "received", "task_started": "started",
                      "task_completed": "succeeded", "task_retrying": "retried",
                      "task_revoked": "revoked", "task_rejected": "rejected"}
    assert counter.count(event("task_started", name="tasks.add")).labels == ("tasks.add",)


def test_progress_worker_and_foreign_events_count_as_nothing():
    counter = TaskCounter(hostname_label=False)
    for kind in ("task_progress", "worker_online", "worker_offline", "task_uploaded"):
        assert counter.count(event(kind, name="tasks.add")) is None


def test_a_failure_is_labelled_by_its_exception_class_from_the_hook_or_the_bridge():
    counter = TaskCounter(hostname_label=False)
    assert counter.count(event("task_failed", "ValueError: boom", name="t")) == Counted(
        "failed", ("t",), exception="ValueError")
    assert exception_of("ValueError('boom')") == "ValueError"
    assert exception_of("WorkerLostError: Worker exited prematurely") == "WorkerLostError"
    assert exception_of("KeyError") == "KeyError"
    assert exception_of("failed") == exception_of(None) == "UnknownException"


def test_a_success_carries_its_runtime_when_the_meta_has_a_usable_one():
    counter = TaskCounter(hostname_label=False)
    assert counter.count(event("task_completed", name="t", runtime=0.25)).runtime == 0.25
    for bad in (-1, float("nan"), True, "0.25"):
        assert counter.count(event("task_completed", name="t", runtime=bad)).runtime is None
    assert counter.count(event("task_started", name="t", runtime=1.0)).runtime is None


def test_without_a_name_the_task_is_unknown_and_past_the_bound_other():
    counter = TaskCounter(hostname_label=False, max_names=2)
    assert counter.count(event("task_started")).labels == (UNKNOWN,)
    assert counter.count(event("task_started", name="")).labels == (UNKNOWN,)
    names = [counter.count(event("task_started", name=n)).labels[0] for n in "abca"]
    assert names == ["a", "b", OTHER, "a"]


def test_the_hostname_label_is_the_workers_host_only_when_asked():
    counter = TaskCounter(hostname_label=True)
    assert counter.label_names == ("name", "hostname")
    assert counter.count(event("task_started", name="t", worker="celery@h1")).labels == ("t", "h1")
    assert counter.count(event("task_started", name="t")).labels == ("t", UNKNOWN)
    assert hostname_of("plain-host") == "plain-host"


def test_the_meta_is_read_from_redis_and_never_sent_to_clients():
    parsed = parse_event(b'{"id":"1-0","type":"task_started","data":{"task_id":"t"},'
                         b'"meta":{"name":"tasks.add","worker":"celery@h"}}')
    assert parsed.meta == {"name": "tasks.add", "worker": "celery@h"}
    assert b"meta" not in parsed.frame and b"tasks.add" not in parsed.frame
    assert parse_event(b'{"type":"task_started","data":{},"meta":"x"}').meta is None


def test_worker_gauges_by_host_up_if_any_worker_is_and_active_tasks_summed():
    data = {"stale": False, "active_tasks": [{"worker": "a@h1"}, {"worker": "a@h1"},
                                             {"worker": "b@h1"}, {"worker": "c@h2"}],
            "worker_states": [{"name": "a@h1", "online": True, "last_heartbeat": None},
                              {"name": "b@h1", "online": False, "last_heartbeat": 5.0},
                              {"name": "c@h2", "online": True, "last_heartbeat": None}]}
    assert worker_gauges(data) == ({"h1": 1, "h2": 1}, {"h1": 2, "h2": 1})


def test_a_stale_snapshot_shows_up_only_workers_whose_heartbeats_are_heard():
    data = {"stale": True, "active_tasks": [{"worker": "a@h1"}],
            "worker_states": [{"name": "a@h1", "online": True, "last_heartbeat": None},
                              {"name": "b@h2", "online": True, "last_heartbeat": 9.0}]}
    assert worker_gauges(data) == ({"h1": 0, "h2": 1}, {"h1": 0, "h2": 0})


def test_queue_lengths_leave_out_unknown_depths():
    assert queue_lengths({"queues": [{"name": "celery", "waiting": 3},
                                     {"name": "other", "waiting": None}]}) == {"celery": 3}


def samples(metrics: Metrics) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(metrics.exposition().decode())
            for s in family.samples}


def test_metrics_count_each_event_once_and_show_every_state_of_a_name_at_zero():
    metrics = Metrics(lambda: 0, MetricsConfig(runtime_buckets=(1.0, 10.0)))
    metrics.task_events([event("task_started", name="t"),
                         event("task_completed", "done", name="t", runtime=2.0),
                         event("task_failed", "KeyError: k", name="t")])
    found = samples(metrics)
    assert found[("celery_task_started_total", (("name", "t"),))] == 1
    assert found[("celery_task_succeeded_total", (("name", "t"),))] == 1
    assert found[("celery_task_failed_total", (("exception", "KeyError"), ("name", "t")))] == 1
    assert found[("celery_task_failed_total", (("exception", ""), ("name", "t")))] == 0
    assert found[("celery_task_rejected_total", (("name", "t"),))] == 0
    assert found[("celery_task_runtime_bucket", (("le", "1.0"), ("name", "t")))] == 0
    assert found[("celery_task_runtime_bucket", (("le", "10.0"), ("name", "t")))] == 1


def test_gauges_appear_only_while_the_data_callback_gives_data():
    data = {"stale": False, "active_tasks": [], "queues": [{"name": "celery", "waiting": 4}],
            "worker_states": [{"name": "w@h", "online": True, "last_heartbeat": None}]}
    shown = {"data": None}
    metrics = Metrics(lambda: 0, celery_data=lambda: shown["data"])
    assert not any(name.startswith(("celery_worker", "celery_queue"))
                   for name, _ in samples(metrics))
    shown["data"] = data
    found = samples(metrics)
    assert found[("celery_worker_up", (("hostname", "h"),))] == 1
    assert found[("celery_worker_tasks_active", (("hostname", "h"),))] == 0
    assert found[("celery_queue_length", (("queue_name", "celery"),))] == 4
