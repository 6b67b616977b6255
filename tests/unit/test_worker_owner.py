"""A task's owner as the worker side finds it and writes it: `events.owner_of`,
`events.with_owner`, and the Notifier's signal handlers with an owner function."""

import json
import logging
from types import SimpleNamespace

import pytest
from celery import Celery

from notify_server.protocol import task_events as events
from notify_server.worker import Notifier


@pytest.mark.parametrize("kwargs, owner", [
    ({"user_id": "alice"}, "alice"),
    ({"user_id": 42}, "42"),
    ({"user_id": -7}, "-7"),
    ("{'user_id': 'alice', 'seconds': 0.5}", "alice"),
    ("{'user_id': 42}", "42"),
    ({"user_id": True}, None),
    ({"user_id": None}, None),
    ({"user_id": 4.2}, None),
    ({"user_id": ["alice"]}, None),
    ({"user_id": {"name": "alice"}}, None),
    ({"customer": "alice"}, None),
    ({}, None),
    (None, None),
    ("{'user_id': 'alice'", None),
    ("__import__('os').getpid()", None),
    ("['alice']", None),
])
def test_owner_is_the_owner_keyword_as_a_string_or_none(kwargs, owner):
    assert events.owner_of(kwargs, "user_id") == owner


def test_owner_keyword_is_the_one_named():
    assert events.owner_of({"user_id": "alice", "customer": "bob"}, "customer") == "bob"


def test_owner_of_a_str_or_int_subclass_is_a_plain_value_without_running_its_code():
    class Login(str):
        def __str__(self):
            raise RuntimeError("must not run")

    class Number(int):
        def __repr__(self):
            raise RuntimeError("must not run")

    owner = events.owner_of({"user_id": Login("alice")}, "user_id")
    assert (owner, type(owner)) == ("alice", str)
    assert events.owner_of({"user_id": Number(42)}, "user_id") == "42"


def test_owner_is_a_top_level_field_of_the_encoded_event_and_not_in_data():
    message = events.with_owner(events.task_started("t-1", "A"), "alice")

    decoded = json.loads(events.encode_event(message))

    assert decoded == {"type": "task_started",
                       "data": {"task_id": "t-1", "avid": "A", "status": "started"},
                       "owner": "alice"}


def test_event_without_owner_has_no_owner_field():
    message = events.task_started("t-1", "A")

    assert events.with_owner(message, None) is message
    assert "owner" not in json.loads(events.encode_event(message))


class RecordingEmitter:
    def __init__(self):
        self.sent = []

    def emit(self, message: dict, once=None, record=None) -> None:
        self.sent.append(json.loads(events.encode_event(message)))

    def flush(self, timeout: float = 5.0) -> bool:
        return True  # every event is in `sent` already


@pytest.fixture
def app():
    app = Celery("owner-unit", set_as_current=False)
    yield app
    app.close()


def task_of(app, task_id, args, kwargs):
    """What Celery passes as `sender`: the task, whose request holds its arguments."""
    return SimpleNamespace(app=app, request=SimpleNamespace(id=task_id, args=args, kwargs=kwargs))


def run_signals(notifier, sender):
    """The signals of one task from start to failure, as the handlers receive them."""
    request = sender.request
    notifier._on_prerun(sender=sender, task_id=request.id, args=request.args,
                        kwargs=request.kwargs)
    notifier._on_retry(sender=sender, request=request, reason="again")
    notifier._on_success(sender=sender, result="done")
    notifier._on_failure(sender=sender, task_id=request.id, exception=ValueError("bad"),
                         args=request.args, kwargs=request.kwargs)
    notifier._on_revoked(sender=sender, request=request, terminated=True, signum=15)


def test_every_event_of_an_owned_task_carries_the_owner_the_function_gives(app):
    emitter = RecordingEmitter()
    seen = []

    def owner(args, kwargs):
        seen.append((args, kwargs))
        return kwargs["account"]["login"]

    notifier = Notifier(app, emitter, "avid", owner_arg="user_id", owner=owner)
    run_signals(notifier, task_of(app, "t-1", ["A"], {"account": {"login": "carol"},
                                                      "user_id": "alice"}))

    assert [m["type"] for m in emitter.sent] == [
        "task_started", "task_retrying", "task_completed", "task_failed", "task_revoked"]
    assert [m["owner"] for m in emitter.sent] == ["carol"] * 5
    assert all("owner" not in m["data"] for m in emitter.sent)
    assert seen[0] == (["A"], {"account": {"login": "carol"}, "user_id": "alice"})


def test_owner_function_gets_parsed_arguments_when_celery_sends_reprs(app):
    emitter = RecordingEmitter()
    notifier = Notifier(app, emitter, "avid", owner=lambda args, kwargs: args[1])

    sender = task_of(app, "t-1", "['A', 42]", "{'seconds': 1.0}")
    notifier._on_revoked(sender=sender, request=sender.request)

    assert emitter.sent[0]["owner"] == "42"


@pytest.mark.parametrize("returned", [None, True, 4.2, ["carol"], object()])
def test_owner_function_returning_no_string_or_whole_number_gives_no_owner(app, returned):
    emitter = RecordingEmitter()
    notifier = Notifier(app, emitter, "avid", owner=lambda args, kwargs: returned)

    run_signals(notifier, task_of(app, "t-1", ["A"], {"user_id": "alice"}))

    assert len(emitter.sent) == 5
    assert not any("owner" in m for m in emitter.sent)


def test_owner_function_that_raises_gives_events_without_owner_and_one_warning_per_type(
        app, caplog):
    emitter = RecordingEmitter()

    def owner(args, kwargs):
        if kwargs.get("explode") == "type":
            raise TypeError("not an account")
        return kwargs["account"]

    notifier = Notifier(app, emitter, "avid", owner=owner)
    with caplog.at_level(logging.WARNING, logger="notify_server.worker"):
        run_signals(notifier, task_of(app, "t-1", ["A"], {}))
        run_signals(notifier, task_of(app, "t-2", ["B"], {"explode": "type"}))
        run_signals(notifier, task_of(app, "t-3", ["C"], {"account": "carol"}))

    assert [m.get("owner") for m in emitter.sent] == [None] * 10 + ["carol"] * 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "KeyError('account')" in warnings[0] and "TypeError" in warnings[1]


def test_without_owner_function_the_owner_keyword_is_read(app):
    emitter = RecordingEmitter()
    notifier = Notifier(app, emitter, "avid", owner_arg="customer")

    run_signals(notifier, task_of(app, "t-1", ["A"], {"customer": 7, "user_id": "alice"}))
    run_signals(notifier, task_of(app, "t-2", ["B"], {"user_id": "alice"}))

    assert [m.get("owner") for m in emitter.sent] == ["7"] * 5 + [None] * 5
