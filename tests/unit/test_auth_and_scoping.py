"""Tokens, scopes and limits (notify_server.access.auth, .hub, .session, .limits), without I/O."""

import time

import jwt
import orjson
import pytest

from notify_server.access.auth import EVERYONE, AuthError, Authenticator, Scope, bearer_token
from notify_server.delivery.hub import Hub
from notify_server.access.limits import ActionBucket, ConnectionCounter
from notify_server.protocol.stream import Event, InvalidEvent, parse_event
from notify_server.delivery.session import Session
from tests.support.wsframes import text_payloads

SECRET = "s" * 32
OTHER = "o" * 32


def token(claims, key=SECRET, algorithm="HS256", **headers):
    return jwt.encode(claims, key, algorithm=algorithm, headers=headers or None)


def valid(**more):
    return {"sub": "alice", "exp": int(time.time()) + 60, **more}


def test_a_valid_token_gives_its_owners_or_its_subject():
    auth = Authenticator([SECRET], leeway=0)
    assert auth.verify(token(valid())).owners == frozenset({"alice"})
    assert auth.verify(token(valid(owners=["a", "b"]))).owners == frozenset({"a", "b"})
    scope = auth.verify(token(valid(admin=True)))
    assert scope.sees_everything and scope.sub == "alice"


def test_any_of_several_secrets_verifies_for_rotation():
    auth = Authenticator([OTHER, SECRET], leeway=0)
    assert auth.verify(token(valid(), key=SECRET)).sub == "alice"
    assert auth.verify(token(valid(), key=OTHER)).sub == "alice"


# Each token is made when its test runs: made at collection, a token "valid for
# 60 s" would have expired by the time a long suite reaches it.
@pytest.mark.parametrize("make, reason", [
    (lambda: None, "token required"),
    (lambda: "", "token required"),
    (lambda: "not.a.jwt", "invalid token"),
    (lambda: token(valid(), key=OTHER), "invalid token: Signature verification failed"),
    (lambda: token(valid(), algorithm="HS512"),
     "invalid token: The specified alg value is not allowed"),
    (lambda: jwt.encode(valid(), None, algorithm="none"), "invalid token"),
    (lambda: token({"sub": "alice"}), "invalid token: Token is missing the \"exp\" claim"),
    (lambda: token({"exp": int(time.time()) + 60}),
     "invalid token: Token is missing the \"sub\" claim"),
    (lambda: token(valid(exp=int(time.time()) - 10)), "token expired"),
    (lambda: token(valid(nbf=int(time.time()) + 60)),
     "invalid token: The token is not yet valid (nbf)"),
    (lambda: token(valid(owners="alice")), "invalid token: 'owners' must be a list of strings"),
    (lambda: token(valid(owners=[1])), "invalid token: 'owners' must be a list of strings"),
    (lambda: token(valid(admin="yes")), "invalid token: 'admin' must be true or false"),
    (lambda: token(valid(aud="another-service")), "invalid token: Invalid audience"),
    (lambda: token(valid(pad="x" * 9000)), "invalid token: longer than 8192 bytes"),
], ids=["none", "empty", "not-a-jwt", "wrong-key", "hs512", "alg-none", "no-exp", "no-sub",
        "expired", "nbf", "owners-string", "owners-numbers", "admin-string", "aud", "huge"])
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_bad_tokens_are_refused_with_a_reason(make, reason):
    bad = make()
    with pytest.raises(AuthError) as refused:
        Authenticator([SECRET], leeway=0).verify(bad)
    assert str(refused.value).startswith(reason)
    if bad:
        assert bad not in str(refused.value)


def test_a_tampered_payload_fails_the_signature():
    header, payload, signature = token(valid()).split(".")
    forged = jwt.utils.base64url_encode(orjson.dumps(valid(admin=True))).decode()
    with pytest.raises(AuthError, match="Signature verification failed"):
        Authenticator([SECRET], leeway=0).verify(f"{header}.{forged}.{signature}")


def test_leeway_admits_a_token_just_expired_and_no_older():
    just = token(valid(exp=int(time.time()) - 2))
    assert Authenticator([SECRET], leeway=5).verify(just).sub == "alice"
    with pytest.raises(AuthError, match="token expired"):
        Authenticator([SECRET], leeway=0).verify(just)


def test_short_secrets_are_refused():
    with pytest.raises(ValueError, match="at least 32"):
        Authenticator(["short"], leeway=0)


def test_bearer_header_parsing():
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer") is None and bearer_token(None) is None


def test_owner_is_read_from_the_top_level_and_never_framed():
    event = parse_event(b'{"id":"1-0","type":"task_started","data":{"task_id":"t"},'
                        b'"owner":"alice"}')
    assert event.owner == "alice"
    assert b"owner" not in event.frame and b"alice" not in event.frame
    assert parse_event(b'{"type":"x","data":{},"owner":42}').owner == "42"
    assert parse_event(b'{"type":"x","data":{}}').owner is None
    for bad in (b'{"type":"x","data":{},"owner":["a"]}', b'{"type":"x","data":{},"owner":true}'):
        with pytest.raises(InvalidEvent, match="owner"):
            parse_event(bad)


def owned(event_id, owner, task_id="t"):
    return Event("task_started", {"task_id": task_id}, id=event_id, owner=owner)


def scoped(*owners):
    sent = []
    scope = EVERYONE if owners == (None,) else Scope("u", frozenset(owners))
    return sent, Session(sent.append, lambda code, reason: sent.append((code, reason)),
                         scope=scope)


def ids(writes):
    return [orjson.loads(p).get("id") for data in writes for p in text_payloads(data)]


def test_the_hub_offers_each_event_to_its_owners_sessions_and_to_everyone_sessions():
    counted = []
    hub = Hub(on_sent=lambda kind, count: counted.append((kind, count)))
    (alice_sent, alice), (bob_sent, bob), (both_sent, both), (admin_sent, admin) = (
        scoped("alice"), scoped("bob"), scoped("alice", "bob"), scoped(None))
    for session in (alice, bob, both, admin):
        hub.add(session)

    shared = hub.publish([owned("1-0", "alice"), owned("2-0", "bob"), owned("3-0", None),
                          owned("4-0", "alice")])

    assert ids(alice_sent) == ["1-0", "4-0"] and len(alice_sent) == 1
    assert ids(bob_sent) == ["2-0"]
    assert ids(both_sent) == ["1-0", "2-0", "4-0"]
    assert ids(admin_sent) == ["1-0", "2-0", "3-0", "4-0"]
    assert shared == 1 and sorted(counted) == [("task_started", 6)]


def test_a_filtered_or_replaying_scoped_session_still_sees_only_its_owner():
    hub = Hub()
    alice_sent, alice = scoped("alice")
    hub.add(alice)
    alice.hold()
    hub.publish([owned("1-0", "bob"), owned("2-0", "alice")])
    alice.replay([owned("0-1", "bob"), owned("0-2", "alice"), owned("0-3", None)])
    alice.release("0-2")
    alice.subscribe(frozenset({"t"}), None)
    hub.publish([owned("3-0", "bob", task_id="t"), owned("4-0", "alice", task_id="t")])
    assert ids(alice_sent) == ["0-2", "2-0", "4-0"]


def test_rescope_moves_a_session_between_owners_and_leaving_forgets_it():
    hub = Hub()
    sent, session = scoped("alice")
    hub.add(session)
    hub.rescope(session, Scope("u", frozenset({"carol"})))
    hub.publish([owned("1-0", "alice"), owned("2-0", "carol")])
    hub.discard(session)
    hub.publish([owned("3-0", "carol")])
    assert ids(sent) == ["2-0"] and len(hub) == 0 and not hub._by_owner


def test_queue_status_push_gives_scoped_sessions_their_own_frame():
    hub = Hub()
    (alice_sent, alice), (admin_sent, admin) = scoped("alice"), scoped(None)
    hub.add(alice)
    hub.add(admin)
    assert hub.send_live(b"all", lambda scope: b"only " + ",".join(scope.owners).encode()) == 2
    assert alice_sent == [b"only alice"] and admin_sent == [b"all"]


def test_connection_counter_limits_in_all_and_per_address():
    counter = ConnectionCounter(max_total=3, max_per_address=2)
    counter.add("a")
    counter.add("a")
    assert counter.refusal("a")[0] == 429
    assert counter.refusal("b") is None
    counter.add("b")
    assert counter.refusal("c")[0] == 503
    counter.remove("a")
    assert counter.refusal("a") is None
    counter.remove("b")
    counter.add("a")
    assert counter.refusal("a")[0] == 429 and counter.refusal("b") is None
    assert ConnectionCounter(0, 0).refusal("x") is None


def test_action_bucket_allows_a_burst_then_the_rate_and_detects_a_flood():
    bucket = ActionBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1) is True          # one token back after 1/rate s
    assert not bucket.flooding
    refused = [bucket.take(0.1) for _ in range(3)]
    assert refused == [False, False, False] and bucket.flooding
    assert bucket.take(1.0) and not bucket.flooding


def test_a_scoped_session_gets_no_queue_push_when_only_others_tasks_moved():
    hub = Hub()
    sent, session = scoped("alice")
    hub.add(session)
    assert hub.send_live(b"all", lambda scope: None) == 0
    assert sent == []


def test_one_event_reaches_exactly_its_owners_sessions_even_if_one_closes_meanwhile():
    counted = []
    hub = Hub(on_sent=lambda kind, count: counted.append((kind, count)))
    (alice_sent, alice), (bob_sent, bob), (admin_sent, admin) = (
        scoped("alice"), scoped("bob"), scoped(None))
    closing_sent = []
    closing = Session(lambda data: (closing_sent.append(data), hub.discard(closing)),
                      lambda code, reason: None, scope=Scope("c", frozenset({"alice"})))
    for session in (alice, bob, admin, closing):
        hub.add(session)

    hub.publish([owned("1-0", "alice")])
    hub.publish([owned("2-0", "alice")])

    assert ids(alice_sent) == ["1-0", "2-0"] and ids(admin_sent) == ["1-0", "2-0"]
    assert bob_sent == [] and ids(closing_sent) == ["1-0"]
    assert counted == [("task_started", 2), ("task_started", 1)]
