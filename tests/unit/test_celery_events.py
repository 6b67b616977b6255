"""The pure half of the Celery event bridge: Celery's event dicts in, protocol
messages (and their transition keys) out; the worker table; public worker events."""

import orjson
import pytest

from notify_server.access.auth import Scope
from notify_server.celery_io.bridge_mapping import CeleryEventMapper
from notify_server.delivery.hub import Hub
from notify_server.delivery.session import Session
from notify_server.protocol import task_events as events
from notify_server.protocol.stream import Event
from notify_server.queue.views import with_workers, workers_moved
from tests.support.wsframes import text_payloads


def received(task_id="t-1", args="['A-1']", kwargs="{}", retries=0, hostname="w1@host"):
    return {"type": "task-received", "uuid": task_id, "name": "app.fetch", "args": args,
            "kwargs": kwargs, "retries": retries, "hostname": hostname, "timestamp": 10.0}


def one(outgoing):
    assert len(outgoing) == 1
    return outgoing[0]


def test_received_names_subject_owner_and_worker_and_later_events_reuse_them():
    mapper = CeleryEventMapper("avid", "user_id")
    first = one(mapper.task_event(received(kwargs="{'user_id': 42, 'seconds': 1}")))
    assert first.message == {"type": "task_received",
                             "data": {"task_id": "t-1", "avid": "A-1", "status": "received",
                                      "worker": "w1@host"},
                             "owner": "42"}
    assert first.once == "t-1:task_received:0"

    started = one(mapper.task_event({"type": "task-started", "uuid": "t-1"}))
    done = one(mapper.task_event({"type": "task-succeeded", "uuid": "t-1",
                                  "result": "'fetched'"}))
    assert started.message == {"type": "task_started", "owner": "42",
                               "data": {"task_id": "t-1", "avid": "A-1", "status": "started"}}
    assert done.message["data"]["message"] == "'fetched'"
    assert (started.once, done.once) == ("t-1:task_started:0", "t-1:task_completed:0")


@pytest.mark.parametrize("args, kwargs, avid", [
    ("['A-1', 2]", "{}", "A-1"),
    ("()", "{'avid': 'K-1'}", "K-1"),
    ("('P',)", "{'avid': 'K-2'}", "K-2"),
    ("[]", "{}", None),
    ("['" + "x" * 50 + "...", "{}", None),          # Celery truncated the repr
    ("__import__('os').system('true')", "{}", None),  # never evaluated
])
def test_the_subject_comes_from_the_reprs_parsed_safely(args, kwargs, avid):
    mapper = CeleryEventMapper("avid", "user_id")
    assert one(mapper.task_event(received(args=args, kwargs=kwargs))).message["data"]["avid"] \
        == avid


def test_a_task_received_before_the_bridge_started_gets_no_subject_rather_than_a_guess():
    mapper = CeleryEventMapper("avid", "user_id")
    failed = one(mapper.task_event({"type": "task-failed", "uuid": "old",
                                    "exception": "ValueError('boom')"}))
    assert failed.message == {"type": "task_failed",
                              "data": {"task_id": "old", "avid": None, "status": "failed",
                                       "message": "ValueError('boom')"}}


def test_each_kind_maps_to_its_type_and_a_retried_task_gets_new_transition_keys():
    mapper = CeleryEventMapper("avid", "user_id")
    mapper.task_event(received())
    retried = one(mapper.task_event({"type": "task-retried", "uuid": "t-1",
                                     "exception": "IOError('later')"}))
    assert retried.message["type"] == "task_retrying" and retried.once == "t-1:task_retrying:0"
    mapper.task_event(received(retries=1))
    again = one(mapper.task_event({"type": "task-started", "uuid": "t-1"}))
    assert again.once == "t-1:task_started:1"
    revoked = one(mapper.task_event({"type": "task-revoked", "uuid": "t-1", "terminated": True,
                                     "signum": 15}))
    assert revoked.message["data"]["message"] == "terminated by signal 15"
    rejected = one(mapper.task_event({"type": "task-rejected", "uuid": "t-1", "requeue": True}))
    assert rejected.message["data"] == {"task_id": "t-1", "avid": "A-1", "status": "rejected",
                                        "message": "requeued"}
    assert mapper.task_event({"type": "task-sent", "uuid": "t-1"}) == []
    assert mapper.task_event({"type": "task-started"}) == []


def test_the_hook_and_the_bridge_name_a_transition_alike():
    mapper = CeleryEventMapper("avid", "user_id")
    mapper.task_event(received(retries=2))
    bridged = one(mapper.task_event({"type": "task-succeeded", "uuid": "t-1", "result": "None"}))
    assert bridged.once == events.transition_key("t-1", events.TASK_COMPLETED, 2)
    assert bridged.message["data"]["message"] == "success"


def test_send_event_progress_becomes_task_progress_each_report_its_own_transition():
    mapper = CeleryEventMapper("avid", "user_id")
    mapper.task_event(received())
    first = one(mapper.task_event({"type": "task-progress", "uuid": "t-1", "current": 1,
                                   "total": 4, "message": "a", "clock": 7}))
    second = one(mapper.task_event({"type": "task-progress", "uuid": "t-1", "current": 2,
                                    "total": 4, "clock": 8}))
    assert first.message["data"] == {"task_id": "t-1", "avid": "A-1", "status": "progress",
                                     "current": 1, "total": 4, "percent": 25.0, "message": "a"}
    assert first.once != second.once
    assert mapper.task_event({"type": "task-progress", "uuid": "t-1", "current": "x",
                              "total": 4}) == []


def test_the_memory_of_tasks_is_bounded():
    mapper = CeleryEventMapper("avid", "user_id", remembered=2)
    for index in range(3):
        mapper.task_event(received(task_id=f"t-{index}", args=f"['A-{index}']"))
    started = [one(mapper.task_event({"type": "task-started", "uuid": f"t-{index}"}))
               for index in range(3)]
    assert [s.message["data"]["avid"] for s in started] == [None, "A-1", "A-2"]


def test_workers_come_online_once_and_go_offline_by_goodbye_or_silence():
    mapper = CeleryEventMapper("avid", "user_id")
    beat = {"type": "worker-heartbeat", "hostname": "w1", "timestamp": 100.0, "freq": 2.0}
    online = one(mapper.worker_event(beat, now=1000.0))
    assert online.message == {"type": "worker_online", "data": {"worker": "w1", "time": 100.0}}
    assert mapper.worker_event({**beat, "timestamp": 102.0}, now=1002.0) == []
    assert mapper.expire(1006.0) == []                      # within two intervals of 1002
    silent = one(mapper.expire(1006.1))
    assert silent.message["type"] == "worker_offline"
    assert silent.message["data"]["reason"] == "heartbeats stopped"
    assert mapper.worker_states() == [{"name": "w1", "online": False, "last_heartbeat": 102.0}]
    assert mapper.expire(1010.0) == []                      # once

    back = one(mapper.worker_event({"type": "worker-online", "hostname": "w1",
                                    "timestamp": 200.0, "freq": 2.0}, now=1100.0))
    assert back.message["type"] == "worker_online" and back.once != online.once
    bye = one(mapper.worker_event({"type": "worker-offline", "hostname": "w1",
                                   "timestamp": 201.0}, now=1101.0))
    assert bye.message["data"] == {"worker": "w1", "time": 201.0, "reason": "shutdown"}
    assert mapper.worker_event({"type": "worker-offline", "hostname": "w1",
                                "timestamp": 202.0}, now=1102.0) == []


def test_one_offline_per_online_period_whoever_detects_it():
    # Two bridges (an old and a new leader) name the same offline alike.
    beat = {"type": "worker-heartbeat", "hostname": "w1", "timestamp": 100.0, "freq": 2.0}
    by_goodbye, by_silence = CeleryEventMapper("a", "u"), CeleryEventMapper("a", "u")
    by_goodbye.worker_event(beat, now=1000.0)
    by_silence.worker_event(beat, now=1000.0)
    said = one(by_goodbye.worker_event({"type": "worker-offline", "hostname": "w1",
                                        "timestamp": 101.0}, now=1001.0))
    noticed = one(by_silence.expire(1010.0))
    assert said.once == noticed.once


def test_workers_follow_the_bridge_table_between_polls():
    polled = {"workers": ["a", "b"], "active_tasks": []}
    table = [{"name": "b", "online": False, "last_heartbeat": 5.0},
             {"name": "c", "online": True, "last_heartbeat": 6.0}]
    data = with_workers(polled, table)
    assert data["workers"] == ["a", "c"]
    assert data["worker_states"] == [{"name": "a", "online": True, "last_heartbeat": None},
                                     table[0], table[1]]
    assert with_workers(polled, None)["worker_states"] == [
        {"name": "a", "online": True, "last_heartbeat": None},
        {"name": "b", "online": True, "last_heartbeat": None}]
    assert not workers_moved(table, [{**table[0], "last_heartbeat": 9.0}, table[1]])
    assert workers_moved(table, [{**table[0], "online": True}, table[1]])
    assert not workers_moved(None, [])


def test_worker_events_reach_every_session_whatever_its_scope_or_subscription():
    hub = Hub()
    sent = {name: [] for name in ("alice", "filtered", "admin")}
    sessions = {
        "alice": Session(sent["alice"].append, print, scope=Scope("alice", frozenset({"alice"}))),
        "filtered": Session(sent["filtered"].append, print,
                            scope=Scope("bob", frozenset({"bob"}))),
        "admin": Session(sent["admin"].append, print),
    }
    sessions["filtered"].subscribe(frozenset({"t-9"}), None)
    for session in sessions.values():
        hub.add(session)

    hub.publish([Event("task_started", {"task_id": "t-1"}, id="1-0", owner="carol"),
                 Event("worker_offline", {"worker": "w1", "time": 1.0}, id="2-0")])

    def ids(writes):
        return [orjson.loads(p)["id"] for data in writes for p in text_payloads(data)]
    assert ids(sent["alice"]) == ["2-0"]
    assert ids(sent["filtered"]) == ["2-0"]
    assert ids(sent["admin"]) == ["1-0", "2-0"]


def test_a_retried_event_after_the_next_attempts_received_keeps_the_attempt_that_raised():
    # Celery re-sends a retried task (task-received, retries + 1) before it
    # sends task-retried for the attempt that raised.
    mapper = CeleryEventMapper("avid", "user_id")
    mapper.task_event(received())
    mapper.task_event({"type": "task-started", "uuid": "t-1"})
    mapper.task_event(received(retries=1))
    retried = one(mapper.task_event({"type": "task-retried", "uuid": "t-1",
                                     "exception": "IOError('later')"}))
    assert retried.once == events.transition_key("t-1", events.TASK_RETRYING, 0)
    assert retried.record["attempt"] == 0
    started = one(mapper.task_event({"type": "task-started", "uuid": "t-1"}))
    assert started.once == events.transition_key("t-1", events.TASK_STARTED, 1)
    assert started.record["attempt"] == 1
