"""The inspect poller's rules (notify_server.queue.poll_outcome), without Celery or a broker."""

import socket

import pytest

from notify_server.queue.poll_outcome import (HALF_ANSWERED, NO_WORKER, classify_failure, judge)

A, B = "celery@a", "celery@b"
NOBODY = frozenset()


def replies(active=(), scheduled=(), reserved=()):
    """Inspect replies as Celery returns them: {worker: [tasks]}, or None when nobody answered."""
    return tuple({worker: [] for worker in workers} or None
                 for workers in (active, scheduled, reserved))


def test_a_poll_every_worker_answered_in_full_is_published_and_names_them_next_time():
    verdict = judge(replies([A, B], [A, B], [A, B]), NOBODY)
    assert verdict.publish and verdict.stale_reason is None and not verdict.poll_again
    assert verdict.ask == {A, B} and verdict.partial == NOBODY


def test_a_poll_nobody_answered_is_stale_and_forgets_the_workers():
    verdict = judge(replies(), NOBODY)
    assert verdict.stale_reason == NO_WORKER and not verdict.publish
    assert verdict.ask == NOBODY


def test_a_worker_coming_online_mid_poll_is_polled_again_not_reported_stale():
    # It subscribed after the `active` broadcast: it heard only the later calls.
    joining = judge(replies([], [], [A]), NOBODY)
    assert joining.poll_again and joining.stale_reason is None and not joining.publish
    assert joining.ask == {A}

    again = judge(replies([A], [A], [A]), joining.partial)
    assert again.publish and again.ask == {A}


def test_a_new_worker_joining_beside_a_known_one_does_not_make_the_lists_stale():
    verdict = judge(replies([A], [A, B], [A, B]), NOBODY)
    assert verdict.poll_again and verdict.stale_reason is None
    assert verdict.ask == {A, B}


def test_a_worker_killed_mid_poll_ends_as_no_worker_answered_not_half_answered():
    # It answered `active`, then died before `scheduled`.
    dying = judge(replies([A], [], []), NOBODY)
    assert dying.poll_again and dying.stale_reason is None and dying.ask == {A}

    gone = judge(replies(), dying.partial)
    assert gone.stale_reason == NO_WORKER


def test_a_worker_killed_mid_poll_beside_a_live_one_just_leaves_the_lists():
    dying = judge(replies([A, B], [B], [B]), NOBODY)
    assert dying.poll_again

    after = judge(replies([B], [B], [B]), dying.partial)
    assert after.publish and after.ask == {B}


def test_a_worker_answering_part_of_two_polls_in_a_row_makes_the_lists_stale():
    first = judge(replies([A], [], [A]), NOBODY)
    second = judge(replies([A], [], [A]), first.partial)
    assert second.stale_reason == HALF_ANSWERED and not second.publish
    assert second.ask == {A} and second.partial == {A}
    # It stays stale, without a retry, while the worker keeps answering in part.
    assert judge(replies([A], [A], []), second.partial).stale_reason == HALF_ANSWERED


class FakeBrokerDown(Exception):
    """Stands for a transport's connection error (redis-py's ConnectionError)."""


BROKER_ERRORS = (OSError, FakeBrokerDown)


def test_broker_errors_mean_the_broker_is_unreachable():
    for exc in (FakeBrokerDown("Connection closed by server."), socket.timeout("timed out"),
                ConnectionRefusedError(111, "Connection refused")):
        failure = classify_failure(exc, BROKER_ERRORS)
        assert failure.broker_down
        assert failure.reason == f"broker unreachable: {type(exc).__name__}: {exc}"


def test_any_other_exception_is_a_bug_named_by_its_type_not_a_broker_outage():
    for exc in (KeyError("hostname"), TypeError("'NoneType' object is not iterable"),
                RuntimeError("helper")):
        failure = classify_failure(exc, BROKER_ERRORS)
        assert not failure.broker_down
        assert failure.reason == (f"inspect poll failed: internal error ({type(exc).__name__}); "
                                  "see the server log")
        assert "broker" not in failure.reason and str(exc) not in failure.reason


def test_workers_taking_turns_at_part_answering_do_not_repeat_the_poll_for_ever():
    first = judge([{"a": [], "b": []}, {"b": []}, {"a": [], "b": []}], frozenset())
    second = judge([{"a": [], "b": []}, {"a": []}, {"a": [], "b": []}], first.partial)

    assert first.poll_again and first.stale_reason is None
    assert not second.poll_again and second.stale_reason is not None


def test_a_hung_inspect_call_fails_the_poll_after_its_time_limit(monkeypatch):
    """The helper process's guard, run here in the main thread: a call that never
    returns is interrupted (the server saw polls stop for good 1 run in 5)."""
    import signal
    import threading

    from notify_server.celery_io import inspect_helper

    released = threading.Event()

    class HungInspect:
        def active(self):
            released.wait(60)  # a broker connection that never answers

    class App:
        class control:
            @staticmethod
            def inspect(**_):
                return HungInspect()

    monkeypatch.setattr(inspect_helper, "_inspect_app", App)
    monkeypatch.setattr(inspect_helper, "inspect_time_limit", lambda timeout: 0.2)
    previous = signal.signal(signal.SIGALRM, inspect_helper._overran)
    try:
        with pytest.raises(inspect_helper.InspectTimeout):
            inspect_helper.poll(None, 1.0, frozenset())
    finally:
        signal.signal(signal.SIGALRM, previous)
        released.set()
    assert isinstance(inspect_helper.InspectTimeout(), OSError)  # counted as a broker fault
