"""Queue depths in `queue_status.queues`: which names are listed, how the
data looks, and what a poll does when the depths cannot be read (no workers,
no Redis: kombu's own key naming is proven against a real Redis in
tests/integration/test_queue_depth.py)."""

import signal

import pytest

from notify_server.celery_io import inspect_helper
from notify_server.celery_io.broker import FAIL_FAST_OPTIONS, broker_app, broker_errors
from notify_server.queue.replies import normalise, queue_names, remember_queues
from notify_server.queue.views import for_scope
from tests.support.wsframes import free_port

ACTIVE_QUEUES = {"celery@a": [{"name": "celery", "exchange": {"name": "celery"},
                               "routing_key": "celery"},
                              {"name": "video", "routing_key": "video"}],
                 "celery@b": [{"name": "video"}, {"no name": 1}, "garbage"],
                 "celery@c": "not a list"}


def test_queue_names_are_those_any_worker_consumes():
    assert queue_names(ACTIVE_QUEUES) == {"celery", "video"}
    assert queue_names(None) == frozenset()


def test_a_known_queue_name_stays_and_new_ones_fill_up_to_the_cap_in_name_order():
    known = frozenset({"celery"})
    assert remember_queues(known, []) == {"celery"}
    assert remember_queues(known, ["b", "a", "celery"]) == {"celery", "a", "b"}
    assert remember_queues(known, ["c", "b", "a"], cap=3) == {"celery", "a", "b"}
    full = frozenset({"x", "y", "z"})
    assert remember_queues(full, ["a"], cap=2) == full  # never dropped, nothing added


def test_queues_are_listed_by_name_with_unknown_depths_as_null():
    data = normalise(None, None, None, {"video": 5, "celery": 0, "mail": None})
    assert data["queues"] == [{"name": "celery", "waiting": 0},
                              {"name": "mail", "waiting": None},
                              {"name": "video", "waiting": 5}]


def test_every_scope_sees_every_queue_depth():
    data = normalise({"celery@a": [{"id": "t1", "kwargs": {"user_id": "alice"}}]}, None, None,
                     {"celery": 3})
    for owners in (None, frozenset({"alice"}), frozenset({"bob"}), frozenset()):
        assert for_scope(data, owners)["queues"] == [{"name": "celery", "waiting": 3}]


def test_a_broker_other_than_redis_reports_unknown_depths():
    app = broker_app("memory://", fail_fast=True)
    assert inspect_helper.read_depths(app, ["video", "celery"]) == {"celery": None, "video": None}


def test_the_workers_transport_options_are_kept_but_the_poll_still_fails_fast():
    theirs = {"global_keyprefix": "app:", "priority_steps": [0, 5], "sep": ":",
              "socket_timeout": 60.0, "max_retries": 100, "master_name": "theirs"}
    options = broker_app("redis://127.0.0.1:1/0", "ours", theirs,
                         fail_fast=True).conf.broker_transport_options
    assert options == {**theirs, **FAIL_FAST_OPTIONS}
    assert broker_app("sentinel://127.0.0.1:1", "ours", fail_fast=True).conf \
        .broker_transport_options["master_name"] == "ours"


class AnsweringInspect:
    """Inspect calls as one worker consuming `video` answers them."""

    def active(self):
        return {"celery@a": []}

    scheduled = reserved = active

    def active_queues(self):
        return {"celery@a": [{"name": "video"}]}


def test_a_depth_read_the_broker_fails_leaves_the_poll_with_null_depths(monkeypatch):
    dead_broker = broker_app(f"redis://127.0.0.1:{free_port()}/0", fail_fast=True)

    class App:
        class control:
            @staticmethod
            def inspect(**_):
                return AnsweringInspect()

        connection_or_acquire = dead_broker.connection_or_acquire

    monkeypatch.setattr(inspect_helper, "_inspect_app", App)
    monkeypatch.setattr(inspect_helper, "_broker_errors",
                        broker_errors(dead_broker.conf.broker_url))
    previous = signal.signal(signal.SIGALRM, inspect_helper._overran)
    try:
        result = inspect_helper.poll(["celery@a"], 1.0, frozenset({"celery"}), ask_queues=True)
    finally:
        signal.signal(signal.SIGALRM, previous)

    assert result.replies == ({"celery@a": []},) * 3
    assert result.queues == {"celery", "video"}
    assert "Connection refused" in result.depth_error
    assert normalise(*result.replies, result.depths)["queues"] == [
        {"name": "celery", "waiting": None}, {"name": "video", "waiting": None}]


@pytest.fixture
def inspecting(monkeypatch):
    """`inspect_helper.poll` as the helper process runs it, against workers
    that answer as `AnsweringInspect`; returns (run, asked): `run(*args,
    **kwargs)` calls `poll`, `asked` lists each `active_queues` call."""
    asked = []

    class Inspect(AnsweringInspect):
        def active_queues(self):
            asked.append("active_queues")
            return super().active_queues()

    class App:
        class control:
            @staticmethod
            def inspect(**_):
                return Inspect()

        connection_or_acquire = broker_app("memory://", fail_fast=True).connection_or_acquire

    monkeypatch.setattr(inspect_helper, "_inspect_app", App)

    def run(*args, **kwargs):
        previous = signal.signal(signal.SIGALRM, inspect_helper._overran)
        try:
            return inspect_helper.poll(*args, **kwargs)
        finally:
            signal.signal(signal.SIGALRM, previous)
    return run, asked


def test_queues_are_asked_only_of_named_workers_when_due_never_in_a_discovery(inspecting):
    """A discovery poll waits the whole timeout for each call: a fourth call
    there would keep the lists a timeout older (a short task could start and
    end unseen). The known workers answer at once, so they are asked."""
    run, asked = inspecting
    named = run(["celery@a"], 1.0, frozenset({"celery"}))
    discovering = run(None, 1.0, frozenset({"celery"}), ask_queues=True)
    due = run(["celery@a"], 1.0, frozenset({"celery"}), ask_queues=True)

    assert named.queues == discovering.queues == {"celery"}
    assert not named.queues_asked and not discovering.queues_asked
    assert named.depths == {"celery": None}
    assert due.queues == {"celery", "video"} and due.queues_asked and asked == ["active_queues"]


def test_queues_are_not_asked_when_a_named_worker_did_not_answer(inspecting):
    """A silent worker would make the fourth call wait a whole timeout too."""
    run, asked = inspecting
    result = run(["celery@a", "celery@gone"], 1.0, frozenset({"celery"}), ask_queues=True)

    assert asked == [] and not result.queues_asked and result.queues == {"celery"}


def test_the_poll_time_limit_covers_four_full_calls():
    assert inspect_helper.inspect_time_limit(1.0) > 4 * 1.0
