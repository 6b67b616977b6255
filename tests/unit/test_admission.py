"""Admission (access.admission): tokens, limits and expiry timers, with the clock and timer handed in."""

import time

import jwt
import pytest

from notify_server.access.admission import Admission
from notify_server.access.auth import EVERYONE, AuthError
from notify_server.config import AccessConfig
from notify_server.protocol import close_codes
from notify_server.protocol.messages import ProtocolError

SECRET = "s" * 32


class Timers:
    """call_later that records; `fire()` runs what is due."""

    def __init__(self):
        self.pending = []

    def call_later(self, delay, callback, *args):
        timer = Timer(delay, callback, args)
        self.pending.append(timer)
        return timer


class Timer:
    def __init__(self, delay, callback, args):
        self.delay, self.callback, self.args, self.cancelled = delay, callback, args, False

    def cancel(self):
        self.cancelled = True


class Peer:
    def __init__(self, peer="10.0.0.1"):
        self.peer, self.closes = peer, []

    def close(self, code, reason):
        self.closes.append((code, reason))


def token(sub="alice", exp=None, **claims):
    exp = NOW + 60 if exp is None else exp
    return jwt.encode({"sub": sub, "exp": exp, **claims}, SECRET, algorithm="HS256")


@pytest.fixture(autouse=True)
def now():
    """PyJWT checks `exp` against the real clock: the tests' clock starts there."""
    global NOW
    NOW = float(int(time.time()))


def admission(refused, timers=None, **access):
    return Admission(AccessConfig(**access), now=lambda: NOW, monotonic=lambda: 0.0,
                     call_later=(timers or Timers()).call_later, on_refused=refused.append)


def test_open_mode_admits_everyone_whatever_they_send_and_refresh_is_refused():
    refused = []
    gate = admission(refused)
    assert gate.authenticate(None) is EVERYONE and gate.authenticate("junk") is EVERYONE
    with pytest.raises(ProtocolError) as error:
        gate.refresh(Peer(), EVERYONE, token())
    assert error.value.code == "auth_disabled" and refused == []


def test_a_bad_token_is_refused_and_counted():
    refused = []
    gate = admission(refused, auth_secrets=(SECRET,))
    with pytest.raises(AuthError):
        gate.authenticate("junk")
    assert refused == ["token"]


def test_limits_count_admitted_and_held_sockets_until_they_leave():
    refused = []
    gate = admission(refused, max_connections=2, max_connections_per_ip=1)
    peer = Peer("a")
    gate.admit(peer, EVERYONE)
    assert gate.refusal("a")[0] == 429
    release = gate.hold_slot("b")
    assert gate.refusal("c")[0] == 503
    assert refused == ["limit", "limit"]
    gate.leave(peer)
    release()
    release()  # twice is once
    assert gate.refusal("a") is None and gate.refusal("c") is None


def test_a_token_socket_is_closed_with_4001_when_its_token_runs_out_plus_the_leeway():
    timers = Timers()
    gate = admission([], timers, auth_secrets=(SECRET,), auth_leeway=5.0)
    peer = Peer()
    scope = gate.authenticate(token(exp=NOW + 60))
    gate.admit(peer, scope)
    [timer] = timers.pending
    assert timer.delay == 65.0
    timer.callback(*timer.args)
    assert peer.closes == [close_codes.TOKEN_EXPIRED]


def test_refresh_moves_the_expiry_and_leaving_cancels_it():
    timers = Timers()
    gate = admission([], timers, auth_secrets=(SECRET,), auth_leeway=0.0)
    peer = Peer()
    scope = gate.authenticate(token(exp=NOW + 10))
    gate.admit(peer, scope)
    renewed, reply = gate.refresh(peer, scope, token(exp=NOW + 100, owners=["alice", "team"]))
    first, second = timers.pending
    assert first.cancelled and second.delay == 100.0
    assert renewed.owners == frozenset({"alice", "team"}) and b'"refreshed"' in reply
    gate.leave(peer)
    assert second.cancelled


def test_refresh_with_another_subjects_token_is_refused():
    gate = admission([], auth_secrets=(SECRET,))
    scope = gate.authenticate(token("alice"))
    with pytest.raises(ProtocolError) as error:
        gate.refresh(Peer(), scope, token("mallory"))
    assert error.value.code == "invalid_token"
