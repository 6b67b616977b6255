"""Property-based fuzzing of the real server process with Hypothesis.

Whatever a client sends, the server answers by the protocol (docs/protocol.md):
an `error` with a documented code, or the action's normal reply; or it closes
the socket with a documented code. Malformed WebSocket framing is refused the
way Tornado 6.5.2 refuses it (modelled in `tornado_answers`, read from
tornado/websocket.py); where that differs from RFC 6455 the comment on the
model says so. After the whole run the server still serves, logged no
traceback and no ERROR, and its memory stayed bounded.

Every example ends with a marker, `{"action": "ping"}`, whose `pong` proves
the socket is still served; nothing here sleeps to wait for the server.
Runs are derandomized (the same examples on every run) and bounded in size.
"""

import json
import re
import socket
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import FrozenSet, List, Optional, Tuple

import orjson
import psutil
import pytest
import redis
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from notify_server.protocol.names import Keys
from notify_server.protocol import task_events
from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.worker.emitter import Emitter
from tests.support.processes import start_server
from tests.support.raw_peer import RawPeer, upgrade
from tests.support.wsframes import (OPCODE_BINARY, OPCODE_CLOSE, OPCODE_CONTINUATION,
                                    OPCODE_PING, OPCODE_PONG, OPCODE_TEXT, client_frame,
                                    close_payload, parse_close)

MAX_MESSAGE_SIZE = 65536  # NOTIFY_MAX_MESSAGE_SIZE's default
MAX_SUBSCRIBE = 1000      # NOTIFY_MAX_SUBSCRIBE's default
# Rate limits high enough that the fuzz is not refused as a flood (still
# accepted: `rate_limited` and a close with 1008). Pings every 5 s so a socket
# Tornado dropped without telling the server is found within one round.
SERVER_ENV = {"NOTIFY_ACTION_RATE": "1000", "NOTIFY_ACTION_BURST": "1000",
              "NOTIFY_PING_INTERVAL": "5", "NOTIFY_PING_TIMEOUT": "5"}
ERROR_CODES = frozenset({
    "invalid_json", "not_an_object", "missing_action", "unknown_action", "invalid_argument",
    "resume_in_progress", "rate_limited", "binary_not_supported", "invalid_token",
    "auth_disabled"})
EVENT_TYPES = frozenset({"task_started", "task_completed", "task_failed", "task_progress",
                         "task_retrying", "task_revoked"})
CLOSE_RATE_LIMITED, CLOSE_TOO_BIG = 1008, 1009
MARKER = b'{"action":"ping"}'
RATE_LIMITED = "error:rate_limited"
NOTHING = "nothing"  # an action that succeeds without a reply (subscribe, resume)
STREAM_ID_SHAPE = re.compile(r"[0-9]+-[0-9]+")  # ASCII digits only, unlike \d or str.isdigit


def is_stream_id(text) -> bool:
    """A Redis stream id: two ASCII-digit unsigned 64-bit numbers."""
    return (isinstance(text, str) and STREAM_ID_SHAPE.fullmatch(text) is not None
            and all(int(part) < 2 ** 64 for part in text.split("-")))


def fuzz_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, derandomize=True, deadline=None,
                    database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


class ServerClosed(Exception):
    """The server ended the socket: with a close frame (`code`, None for an
    empty one) or by dropping the TCP connection (`framed` False)."""

    def __init__(self, framed: bool, code: Optional[int] = None):
        super().__init__(f"close frame {code}" if framed else "TCP connection dropped")
        self.framed, self.code = framed, code


# -- what the protocol says the answer to one text frame is -------------------

def protocol_answers(payload: bytes) -> FrozenSet[str]:
    """The answers docs/protocol.md allows to one text frame: "error:<code>",
    a reply type ("pong", "queue_status"), NOTHING, or "close:1009".
    `rate_limited` (and a close with 1008) are always allowed on top.

    JSON is judged by orjson, the server's parser. Where orjson is stricter
    than RFC 8259, valid JSON gets `invalid_json`: nesting deeper than 1024,
    a number beyond the double range (10**400), a lone surrogate escape
    ("\\ud800"). Integers beyond 64 bits become floats (so they are not valid
    task ids). Of two equal keys the last wins.
    """
    if len(payload) > MAX_MESSAGE_SIZE:
        return frozenset({f"close:{CLOSE_TOO_BIG}"})
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return frozenset({"error:invalid_json"})
    if not isinstance(message, dict):
        return frozenset({"error:not_an_object"})
    action = message.get("action")
    if action is None:
        return frozenset({"error:missing_action"})
    if action == "ping":
        return frozenset({"pong"})
    if action == "get_queue_status":
        return frozenset({"queue_status"})
    if action == "subscribe":
        return frozenset({_subscribe_answer(message)})
    if action == "resume":
        return _resume_answers(message.get("last_event_id"))
    if action == "refresh":
        # Open mode: `auth_disabled`; a missing token may be refused first;
        # a server without token mode knows no such action.
        return frozenset({"error:auth_disabled", "error:invalid_argument",
                          "error:unknown_action"})
    return frozenset({"error:unknown_action"})


def _subscribe_answer(message: dict) -> str:
    lists = [message.get("task_ids"), message.get("avids")]
    if all(value is None for value in lists):
        return "error:invalid_argument"
    if sum(len(value) for value in lists if isinstance(value, list)) > MAX_SUBSCRIBE:
        return "error:invalid_argument"
    for value in lists:
        if value is not None and not (isinstance(value, list) and all(
                isinstance(item, (str, int)) and not isinstance(item, bool) for item in value)):
            return "error:invalid_argument"
    return NOTHING


def _resume_answers(last_event_id) -> FrozenSet[str]:
    if is_stream_id(last_event_id):
        # Replayed events or `resync`, then `queue_status`, all after the marker's pong.
        return frozenset({NOTHING, "error:resume_in_progress"})
    return frozenset({"error:invalid_argument"})


def query_argument(raw: bytes) -> Optional[str]:
    """What Tornado's get_query_argument makes of `raw` (None: not UTF-8):
    control characters become spaces, then surrounding whitespace goes."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return re.sub(r"[\x00-\x08\x0e-\x1f]", " ", text).strip()


# -- one socket, reused across examples ----------------------------------------

class FuzzTarget:
    """The server under fuzz, and one client socket reused across examples
    (opened again when the server closed it)."""

    def __init__(self, child, port: int, redis_url: str):
        self.child, self.port, self.redis_url = child, port, redis_url
        self.history_ids: List[str] = []
        self.fuzzed: set = set()  # the fuzz runs done (or tried) on this server
        self.rss_after_warm_up = 0
        self._peer: Optional[RawPeer] = None

    @property
    def rss(self) -> int:
        return psutil.Process(self.child.process.pid).memory_info().rss

    def emit_events(self, tag: str, count: int) -> None:
        emitter = Emitter(self.redis_url)
        for number in range(count):
            emitter.emit(task_events.task_progress(f"{tag}-{number}", tag, number, count, ""))
        assert emitter.flush()
        history = redis.Redis.from_url(self.redis_url)
        self.history_ids = [entry_id.decode() for entry_id, _ in
                            history.xrange(Keys().history_stream)]
        history.close()

    def open_connections(self) -> float:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as reply:
            text = reply.read().decode()
        return float(re.search(r"^notify_open_connections (\S+)$", text, re.M).group(1))

    def connect(self, query: str = "") -> RawPeer:
        return RawPeer.connect(self.port, query=query)

    def peer(self) -> RawPeer:
        if self._peer is None:
            self._peer = self.connect()
            first = read_message(self._peer)
            assert first["type"] == "queue_status", first
        return self._peer

    def drop_peer(self) -> None:
        if self._peer is not None:
            self._peer.close()
            self._peer = None

    def answer(self, payload: bytes, expected: FrozenSet[str]) -> Tuple[str, List[dict]]:
        """Send `payload` and the marker on the reused socket; return the
        answer to `payload` (a label as in `protocol_answers`) and the other
        messages that came meanwhile. A close is returned as "close:CODE"
        (the socket is reopened for the next example)."""
        peer = self.peer()
        try:
            send(peer, client_frame(OPCODE_TEXT, payload))
            send(peer, client_frame(OPCODE_TEXT, MARKER))
            return self._read_answer(peer, payload, expected)
        except ServerClosed as closed:
            self.drop_peer()
            return f"close:{closed.code if closed.framed else 'dropped'}", []

    def _read_answer(self, peer: RawPeer, payload: bytes,
                     expected: FrozenSet[str]) -> Tuple[str, List[dict]]:
        answer, others = None, []
        while True:
            message = read_message(peer)
            kind = message["type"]
            if kind not in ("pong", "error") and not (
                    kind == "queue_status" and "queue_status" in expected and answer is None):
                others.append(message)
                continue
            # A pong the frame could not have caused is the marker's.
            if answer is None and not (kind == "pong" and "pong" not in expected):
                answer = message
                continue
            if kind == "pong":
                break
            assert label(message) == RATE_LIMITED, (payload[:200], message)
            time.sleep(0.01)  # the marker was refused: a token comes back within 1 ms
            send(peer, client_frame(OPCODE_TEXT, MARKER))
        answered = label(answer) if answer is not None else NOTHING
        if answered == NOTHING and payload_action(payload) == "resume":
            # A resume ends with a queue_status (after its replay or resync).
            while not any(m["type"] == "queue_status" for m in others):
                others.append(read_message(peer))
        return answered, others


def send(peer: RawPeer, data: bytes) -> None:
    try:
        peer.send(data)
    except OSError:
        pass  # the server already dropped the connection: reading says how


def read_message(peer: RawPeer, timeout: float = 5.0) -> dict:
    """The next text message; raises ServerClosed at a close frame or EOF."""
    while True:
        try:
            frame = peer.next_frame(timeout)
        except socket.timeout:
            raise AssertionError(f"the server sent nothing within {timeout} s") from None
        if frame is None:
            raise ServerClosed(framed=False)
        opcode, data = frame
        if opcode == OPCODE_CLOSE:
            raise ServerClosed(framed=True, code=parse_close(data)[0])
        if opcode == OPCODE_TEXT:
            message = json.loads(data)
            assert_well_formed(message)
            return message
        assert opcode == OPCODE_PONG, (opcode, data)


def assert_well_formed(message: dict) -> None:
    """Every server message is {"type", "data"} with a known type (events may carry "id")."""
    assert isinstance(message, dict) and isinstance(message.get("data"), dict), message
    kind = message["type"]
    assert kind in {"queue_status", "pong", "error", "resync", "refreshed"} | EVENT_TYPES, message
    if kind == "error":
        assert message["data"]["code"] in ERROR_CODES, message
        assert isinstance(message["data"]["message"], str), message


def label(message: dict) -> str:
    if message["type"] == "error":
        return f"error:{message['data']['code']}"
    return message["type"]


def payload_action(payload: bytes):
    try:
        message = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    return message.get("action") if isinstance(message, dict) else None


def assert_protocol_answer(target: FuzzTarget, payload: bytes) -> None:
    expected = protocol_answers(payload)
    answered, others = target.answer(payload, expected)
    allowed = expected | {RATE_LIMITED, f"close:{CLOSE_RATE_LIMITED}"}
    assert answered in allowed, (f"sent {payload[:300]!r} ({len(payload)} bytes): "
                                 f"got {answered}, expected one of {sorted(expected)}")
    for message in others:  # unsolicited: pushed queue_status, a resume's replay or resync
        assert message["type"] in {"queue_status", "resync"} | EVENT_TYPES, (payload[:200],
                                                                              message)


# -- strategies: client actions ------------------------------------------------

# Text frames carry UTF-8, so no lone surrogates here (they come as "\ud800" escapes below).
characters = st.characters(codec="utf-8")
short_texts = st.text(characters, max_size=12)
numbers = (st.integers(-2**63, 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
           | st.sampled_from([10**400, -10**400, 2**64, -2**63 - 1, 10**30, 1e308, -0.0]))
scalars = st.none() | st.booleans() | numbers | short_texts
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(short_texts, inner, max_size=4), max_leaves=12)
action_names = st.sampled_from([
    "ping", "get_queue_status", "subscribe", "resume", "refresh", "PING", " ping", "ping\x00",
    "", "pong", "get_queue_status ", "ṗing", "𝐩𝐢𝐧𝐠", "queue_status", "__class__"])
id_items = st.one_of(short_texts, st.integers(-2**63, 2**64 - 1), numbers, st.booleans(),
                     st.none(), st.lists(short_texts, max_size=2))
id_lists = st.one_of(
    st.none(), st.lists(id_items, max_size=6), st.lists(short_texts | st.integers(), max_size=6),
    json_values,
    st.integers(MAX_SUBSCRIBE - 2, MAX_SUBSCRIBE + 2).map(
        lambda n: [f"t-{number}" for number in range(n)]))
odd_event_ids = st.one_of(
    st.from_regex(r"\A[0-9]{1,24}-[0-9]{1,24}\Z"),
    st.from_regex(r"\A\d{1,3}-\d{1,3}\Z"),  # Unicode digits: "٣-٠", "²-0"
    st.sampled_from(["0-0", "$", "+", "-", "*", ">", "1-", "-1", "1-0-0", " 1-0", "1-0\n",
                     "18446744073709551615-18446744073709551615", "0x1-0", "1e3-0"]),
    json_values)


def objects_with(required: dict, optional: dict) -> st.SearchStrategy:
    """An object with `required` and any of `optional`, plus stray keys."""
    return st.builds(lambda extra, fixed: {**extra, **fixed},
                     st.dictionaries(short_texts, json_values, max_size=2),
                     st.fixed_dictionaries(required, optional=optional))


def dumped(values: st.SearchStrategy) -> st.SearchStrategy:
    """JSON text of `values`, with or without \\u escapes (astral characters as surrogate pairs)."""
    return st.builds(lambda value, ascii_only: json.dumps(value, ensure_ascii=ascii_only).encode(),
                     values, st.booleans())


def padded_ping(size: int, fill: str) -> bytes:
    """A ping action padded with `fill` to about `size` bytes (its UTF-8 bytes count)."""
    head, tail = b'{"action":"ping","pad":"', b'"}'
    count = max(0, size - len(head) - len(tail)) // len(fill.encode())
    return head + (fill * count).encode() + tail


def nested(depth: int) -> bytes:
    return b'{"action":"ping","x":' + b"[" * depth + b"]" * depth + b"}"


def duplicate_keys(pairs) -> bytes:
    return ("{" + ",".join(f"{json.dumps(key)}:{json.dumps(value)}" for key, value in pairs)
            + "}").encode()


def action_payloads(history_ids: List[str]) -> st.SearchStrategy:
    event_ids = st.sampled_from(history_ids) | odd_event_ids if history_ids else odd_event_ids
    return st.one_of(
        dumped(json_values),
        dumped(objects_with({}, {"action": json_values | action_names})),
        dumped(objects_with({"action": action_names}, {})),
        dumped(objects_with({"action": st.just("subscribe")},
                            {"task_ids": id_lists, "avids": id_lists})),
        dumped(objects_with({"action": st.just("resume"), "last_event_id": event_ids}, {})),
        dumped(objects_with({"action": st.just("resume")}, {"last_event_id": json_values})),
        dumped(objects_with({"action": st.just("refresh")}, {"token": short_texts | json_values})),
        st.text(characters, max_size=40).map(str.encode),
        st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b'"ping"', b"\xef\xbb\xbf{}",
                         b'{"action":"\\ud800"}', b'{"action":"ping","x":"\\udfff"}',
                         b'{"action":"ping","x":"\\ud83d\\ude00"}', b'{"action":"ping",}',
                         b'{"action":"ping"} {}', b'{"action":NaN}', b'{"action":Infinity}',
                         b' \n\t{"action":"ping"}\r\n']),
        st.integers(1, 10_000).map(nested),
        st.lists(st.tuples(st.sampled_from(["action", "task_ids", "avids", "last_event_id"]),
                           json_values | action_names), min_size=2, max_size=4)
        .map(duplicate_keys),
        st.builds(padded_ping, st.integers(MAX_MESSAGE_SIZE - 64, MAX_MESSAGE_SIZE + 64),
                  st.sampled_from(["x", "é", "😀"])),
        st.builds(padded_ping, st.integers(0, MAX_MESSAGE_SIZE), st.just("x")),
    )


ACTION_EXAMPLES = [
    b'{"action":"resume","last_event_id":"\xc2\xb2-0"}',  # "²-0": str.isdigit, but not int()
    b'{"action":"resume","last_event_id":"\xd9\xa1-\xd9\xa0"}',  # "١-٠"
    b'{"action":"resume","last_event_id":"99999999999999999999999-0"}',
    b'{"action":' + b"1" + b"0" * 400 + b"}",  # 10**400
    b'{"action":"subscribe","task_ids":[100000000000000000000]}',  # a float to orjson
    b"[" * 10_000 + b"]" * 10_000,
    nested(1022), nested(1023), nested(1024),
    b'{"action":"\\ud83d\\ude00"}', b'{"action":"refresh"}', b'{"action":"refresh","token":"x"}',
    padded_ping(MAX_MESSAGE_SIZE, "x"), padded_ping(MAX_MESSAGE_SIZE + 1, "x"),
    padded_ping(MAX_MESSAGE_SIZE + 2, "é"),
]


def fuzz_actions(target: FuzzTarget, max_examples: int = 1000) -> None:
    @fuzz_settings(max_examples)
    @given(payload=action_payloads(target.history_ids))
    def answers_by_the_protocol(payload):
        assert_protocol_answer(target, payload)

    for payload in ACTION_EXAMPLES:
        answers_by_the_protocol = example(payload=payload)(answers_by_the_protocol)
    answers_by_the_protocol()
    target.drop_peer()


def fuzz_query(target: FuzzTarget, max_examples: int = 100) -> None:
    values = st.one_of(st.sampled_from([i.encode() for i in target.history_ids] or [b"1-0"]),
                       odd_event_ids.filter(lambda v: isinstance(v, str)).map(str.encode),
                       st.binary(max_size=8))

    @fuzz_settings(max_examples)
    @given(name=st.sampled_from(["last_event_id", "token"]), raw=values)
    @example(name="last_event_id", raw=b"\xc2\xb2-0")  # "²-0"
    @example(name="last_event_id", raw=b"\xff")        # not UTF-8
    @example(name="token", raw=b"\xff")
    def resumes_or_refuses_the_id(name, raw):
        query = f"{name}={urllib.parse.quote_from_bytes(raw)}"
        argument = query_argument(raw)
        head, sock = upgrade(target.port, query)
        status = head.split(b" ", 2)[1]
        if argument is None:
            # Not UTF-8: refused before the upgrade, in the envelope.
            assert status == b"400", (query, head)
            return
        assert status == b"101", (query, head)
        peer, seen = RawPeer(sock), []
        try:
            send(peer, client_frame(OPCODE_TEXT, MARKER))
            while not {"pong", "queue_status"} <= {message["type"] for message in seen}:
                seen.append(read_message(peer))
        except ServerClosed as closed:
            raise AssertionError(f"?{query}: {closed} after the 101; got {seen}") from None
        finally:
            peer.close()
        kinds = [label(message) for message in seen]
        if name == "token":  # open mode: a token is ignored
            assert set(kinds) == {"queue_status", "pong"}, (query, kinds)
        elif is_stream_id(argument):
            # The replay (or resync), then queue_status; the marker's pong anywhere.
            assert [kind for kind in kinds if kind != "pong"][-1] == "queue_status", kinds
            assert set(kinds) <= {"queue_status", "pong", "resync"} | EVENT_TYPES, kinds
        else:
            # Documented: queue_status first, then invalid_argument, and the socket stays open.
            assert kinds[0] == "queue_status", (query, kinds)
            assert [kind for kind in kinds[1:] if kind != "queue_status"] == [
                "error:invalid_argument", "pong"], (query, kinds)

    resumes_or_refuses_the_id()


# -- raw frames: what Tornado 6.5.2 does with them ------------------------------

@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes = b""
    fin: bool = True
    rsv: int = 0
    masked: bool = True
    declared_length: Optional[int] = None  # a header length other than the payload's

    @property
    def length(self) -> int:
        return len(self.payload) if self.declared_length is None else self.declared_length

    def encode(self) -> bytes:
        return client_frame(self.opcode, self.payload, fin=self.fin, rsv=self.rsv,
                            masked=self.masked, declared_length=self.declared_length)


DROP = ("drop",)  # the TCP connection ends with no close frame


def tornado_answers(frames: List[Frame]) -> List[tuple]:
    """What the server sends back for `frames`, as Tornado 6.5.2 reads them
    (WebSocketProtocol13._receive_frame and _handle_message), in order:
    ("pong", payload), ("text", allowed labels), ("close", code or None),
    DROP. After a close or a DROP nothing more is read.

    Where RFC 6455 says otherwise (each is asserted as Tornado does it):
    - An unmasked client frame is accepted (5.1: the server MUST close).
    - A protocol error (RSV bits, a reserved opcode, a control frame over 125
      bytes or fragmented, a continuation with nothing to continue, a new
      message inside a fragmented one) and invalid UTF-8 in a text message
      drop the TCP connection without a close frame; 7.1.7 says the endpoint
      SHOULD first send a close frame (1002, or 1007 for bad UTF-8).
    - A close frame's code is echoed whatever it is (0, 999, 1005, 1006, 1015,
      2999, 5000, 65535...): 7.4 says such codes are invalid and 1005/1006/1015
      MUST NOT be sent. A 1-byte close payload gets an empty close frame
      (it is a protocol error: 1002). Invalid UTF-8 in the close reason
      raises UnicodeDecodeError inside Tornado's frame loop, which
      accept_connection takes for a malformed request (a DEBUG log line):
      the connection is dropped and the handler's on_close is never called
      (the server finds the socket closed at its next write to it, a
      broadcast or a heartbeat ping).
    - The size limit counts a control frame's payload into the fragmented
      message it interrupts: a ping inside a message just under the limit
      closes with 1009.
    """
    seen, buffered, first_opcode = [], None, None
    for frame in frames:
        control = frame.opcode & 0x8
        if frame.rsv:  # no extension negotiated
            return seen + [DROP]
        if control and frame.length >= 126:
            return seen + [DROP]
        if frame.length + (len(buffered) if buffered is not None else 0) > MAX_MESSAGE_SIZE:
            return seen + [("close", CLOSE_TOO_BIG)]  # before the payload is read
        if control:
            if not frame.fin:
                return seen + [DROP]
            message = (frame.opcode, frame.payload)
        elif frame.opcode == OPCODE_CONTINUATION:
            if buffered is None:
                return seen + [DROP]
            buffered += frame.payload
            message = None
            if frame.fin:
                message, buffered = (first_opcode, bytes(buffered)), None
        else:
            if buffered is not None:
                return seen + [DROP]
            message = (frame.opcode, frame.payload)
            if not frame.fin:
                buffered, first_opcode, message = bytearray(frame.payload), frame.opcode, None
        if message is None:
            continue
        answer = _answer_to_message(*message)
        if answer is not None:
            seen.append(answer)
            if answer[0] in ("close", "drop"):
                return seen
    return seen


def _answer_to_message(opcode: int, data: bytes) -> Optional[tuple]:
    if opcode == OPCODE_TEXT:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return DROP
        return ("text", protocol_answers(data) | {RATE_LIMITED})
    if opcode == OPCODE_BINARY:
        return ("text", frozenset({"error:binary_not_supported", RATE_LIMITED}))
    if opcode == OPCODE_CLOSE:
        try:
            data[2:].decode("utf-8")
        except UnicodeDecodeError:
            return DROP
        return ("close", int.from_bytes(data[:2], "big") if len(data) >= 2 else None)
    if opcode == OPCODE_PING:
        return ("pong", data)
    if opcode == OPCODE_PONG:
        return None
    return DROP  # reserved opcodes 3-7 and 0xB-0xF


def observe(peer: RawPeer, frames: List[Frame], expected: List[tuple]) -> List[tuple]:
    """Send `frames` at once; read as many answers as `expected` has, then,
    if it ends in a close or a drop, until the connection ends."""
    send(peer, b"".join(frame.encode() for frame in frames))
    seen = []
    ends = bool(expected) and expected[-1][0] in ("close", "drop")
    while len(seen) < len(expected) or (ends and len(seen) == len(expected)):
        try:  # a dropped connection ends at once; do not wait long for a drop that is not coming
            frame = peer.next_frame(5 if len(seen) < len(expected) else 1)
        except socket.timeout:
            seen.append(("timeout",))
            break
        if frame is None:
            seen.append(DROP)
            break
        opcode, data = frame
        if opcode == OPCODE_CLOSE:
            seen.append(("close", parse_close(data)[0]))
        elif opcode == OPCODE_PONG:
            seen.append(("pong", data))
        elif opcode == OPCODE_TEXT:
            message = json.loads(data)
            assert_well_formed(message)
            wanted = expected[len(seen)] if len(seen) < len(expected) else ("none",)
            if label(message) == "queue_status" and not (
                    wanted[0] == "text" and "queue_status" in wanted[1]):
                continue  # pushed by the poller when the queue's state changed
            seen.append(("text", label(message)))
        else:
            seen.append(("unexpected", opcode, data))
    return seen


def matches(seen: List[tuple], expected: List[tuple]) -> bool:
    if expected and expected[-1][0] == "close":
        expected = expected + [DROP]  # Tornado closes the TCP connection right after
    if len(seen) != len(expected):
        return False
    return all(got[0] == want[0] and (got[1] in want[1] if got[0] == "text" else got == want)
               for got, want in zip(seen, expected))


# -- strategies: raw frame sequences --------------------------------------------

INVALID_UTF8 = [b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82",
                b"\x80", b"\xf8\x88\x80\x80\x80"]
BAD_CLOSE_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535]
GOOD_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4999]

text_messages = st.one_of(
    st.just(MARKER),
    dumped(objects_with({"action": action_names}, {})),
    st.builds(padded_ping, st.integers(MAX_MESSAGE_SIZE - 200, MAX_MESSAGE_SIZE + 8),
              st.sampled_from(["x", "é", "😀"])),
    st.builds(lambda head, bad, tail: b'{"action":"ping","x":"' + head + bad + tail + b'"}',
              st.text(characters, max_size=4).map(str.encode), st.sampled_from(INVALID_UTF8),
              st.text(characters, max_size=4).map(str.encode)),
    st.binary(max_size=40))
close_payloads = st.one_of(
    st.builds(close_payload,
              st.sampled_from(BAD_CLOSE_CODES + GOOD_CLOSE_CODES) | st.integers(0, 65535),
              st.text(characters, max_size=20).map(str.encode) | st.sampled_from(INVALID_UTF8)),
    st.binary(min_size=1, max_size=1), st.just(b""))
control_frames = st.one_of(
    st.builds(Frame, st.just(OPCODE_PING), st.binary(max_size=130)),
    st.builds(Frame, st.just(OPCODE_PONG), st.binary(max_size=130)),
    st.builds(Frame, st.just(OPCODE_CLOSE), close_payloads),
    st.builds(Frame, st.sampled_from([0xB, 0xC, 0xD, 0xE, 0xF]), st.binary(max_size=8)))


@st.composite
def fragmented(draw, data: bytes, opcode: int) -> List[Frame]:
    """`data` as one message of `opcode` cut into fragments, with control frames between."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces = [data[start:end] for start, end in zip([0] + cuts, cuts + [len(data)])]
    frames = []
    for index, piece in enumerate(pieces):
        frames.append(Frame(opcode if index == 0 else OPCODE_CONTINUATION, piece,
                            fin=index == len(pieces) - 1))
        if index < len(pieces) - 1 and draw(st.integers(0, 3)) == 0:
            frames.append(draw(control_frames))
    return frames


@st.composite
def mutated(draw, frames: List[Frame]) -> List[Frame]:
    """`frames` with up to two changes a buggy or hostile client would make."""
    frames = list(frames)
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        index = draw(st.integers(0, len(frames) - 1))
        frame = frames[index]
        change = draw(st.sampled_from(["rsv", "unmask", "opcode", "fin", "drop", "insert"]))
        if change == "rsv":
            frames[index] = Frame(frame.opcode, frame.payload, frame.fin,
                                  draw(st.integers(1, 7)), frame.masked)
        elif change == "unmask":
            frames[index] = Frame(frame.opcode, frame.payload, frame.fin, frame.rsv, False)
        elif change == "opcode":
            frames[index] = Frame(draw(st.integers(0, 15)), frame.payload, frame.fin,
                                  frame.rsv, frame.masked)
        elif change == "fin":
            frames[index] = Frame(frame.opcode, frame.payload, not frame.fin, frame.rsv,
                                  frame.masked)
        elif change == "drop" and len(frames) > 1:
            del frames[index]
        else:
            frames.insert(index, draw(control_frames | st.builds(
                Frame, st.sampled_from([1, 2, 3, 4, 5, 6, 7]), st.binary(max_size=8),
                st.booleans())))
    return frames


@st.composite
def frame_sequences(draw) -> List[Frame]:
    data = draw(text_messages)
    opcode = draw(st.sampled_from([OPCODE_TEXT] * 6 + [OPCODE_BINARY, 3, 7]))
    frames = draw(mutated(draw(fragmented(data, opcode))))
    if draw(st.integers(0, 9)) == 0:  # a header that declares more than the limit
        frames.append(Frame(draw(st.sampled_from([OPCODE_TEXT, OPCODE_BINARY,
                                                  OPCODE_CONTINUATION])),
                            declared_length=draw(st.integers(MAX_MESSAGE_SIZE + 1, 2**64 - 1))))
    return frames + [Frame(OPCODE_TEXT, MARKER)]  # answered with a pong while the socket is served


FRAME_EXAMPLES = [
    *[[Frame(OPCODE_CLOSE, close_payload(code))] for code in BAD_CLOSE_CODES],  # echoed
    [Frame(OPCODE_TEXT, MARKER, masked=False)],                    # unmasked: answered
    *[[Frame(OPCODE_TEXT, MARKER, rsv=rsv)] for rsv in range(1, 8)],  # RSV1-3
    *[[Frame(opcode, b"x")] for opcode in (3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)],
    [Frame(OPCODE_PING, b"p" * 126)],                              # control frame over 125
    [Frame(OPCODE_CLOSE, b"\x03\xe8" + b"r" * 124)],
    [Frame(OPCODE_PING, b"p", fin=False)],                         # fragmented control
    [Frame(OPCODE_CONTINUATION, b"{}")],                           # nothing to continue
    [Frame(OPCODE_TEXT, b'{"action"', fin=False), Frame(OPCODE_TEXT, b'{}')],  # new message
    [Frame(OPCODE_TEXT, b'{"action"', fin=False), Frame(OPCODE_PING, b"in"),
     Frame(OPCODE_CONTINUATION, b':"pi', fin=False), Frame(OPCODE_CONTINUATION, b'ng"}')],
    [Frame(OPCODE_TEXT, '{"action":"ping","x":"😀"}'.encode()[:24], fin=False),
     Frame(OPCODE_CONTINUATION, '{"action":"ping","x":"😀"}'.encode()[24:])],  # UTF-8 split
    [Frame(OPCODE_TEXT, b'{"x":"\xff"}')],                         # invalid UTF-8
    [Frame(OPCODE_TEXT, b'{"x":"\xed\xa0\x80"}')],                 # an encoded surrogate
    [Frame(OPCODE_CLOSE, b"\x03")],                                # 1-byte close payload
    [Frame(OPCODE_CLOSE, b"\x03\xe8\xff\xfe")],                    # invalid UTF-8 reason
    [Frame(OPCODE_CLOSE, b"")],
    [Frame(OPCODE_TEXT, declared_length=MAX_MESSAGE_SIZE + 1)],
    [Frame(OPCODE_TEXT, declared_length=2**63)],
    [Frame(OPCODE_TEXT, declared_length=2**64 - 1)],
    [Frame(OPCODE_TEXT, padded_ping(MAX_MESSAGE_SIZE, "x"))],
    [Frame(OPCODE_TEXT, padded_ping(MAX_MESSAGE_SIZE, "x")[:-2], fin=False),
     Frame(OPCODE_CONTINUATION, b'"}')],                           # exactly the limit, in two
    [Frame(OPCODE_TEXT, padded_ping(MAX_MESSAGE_SIZE - 10, "x")[:-2], fin=False),
     Frame(OPCODE_PING, b"p" * 20), Frame(OPCODE_CONTINUATION, b'"}')],  # the ping counted
    [Frame(OPCODE_BINARY, b"\x00\xff")],
]


def fuzz_frames(target: FuzzTarget, max_examples: int = 800) -> None:
    @fuzz_settings(max_examples)
    @given(frames=frame_sequences())
    def answered_as_tornado_does(frames):
        expected = tornado_answers(frames)
        # A subscribe or resume that succeeds answers nothing: no frame to count on.
        assume(not any(answer[0] == "text" and NOTHING in answer[1] for answer in expected))
        peer = target.connect()
        try:
            assert read_message(peer)["type"] == "queue_status"
            seen = observe(peer, frames, expected)
        finally:
            peer.close()
        assert matches(seen, expected), (f"sent {[describe(frame) for frame in frames]}: "
                                         f"got {seen}, expected {expected}")

    for frames in FRAME_EXAMPLES:
        answered_as_tornado_does = example(frames=frames + [Frame(OPCODE_TEXT, MARKER)])(
            answered_as_tornado_does)
    answered_as_tornado_does()


def describe(frame: Frame) -> str:
    return (f"op={frame.opcode:#x} fin={int(frame.fin)} rsv={frame.rsv} masked="
            f"{int(frame.masked)} len={frame.length} {frame.payload[:40]!r}")


# -- the server under fuzz ------------------------------------------------------

@pytest.fixture(scope="module")
def fuzz_server():
    """A server on a private Redis (so a resume replays a small known history),
    warmed up so that its memory afterwards measures the fuzz alone."""
    store = EmbeddedRedis()
    store.start()
    try:
        child, port = start_server(store.url, env=SERVER_ENV, name="server-fuzz")
        target = FuzzTarget(child, port, store.url)
        try:
            target.emit_events("FUZZ-HISTORY", 30)
            warm_up(target)
            target.rss_after_warm_up = target.rss
            yield target
        finally:
            target.drop_peer()
            child.stop()
    finally:
        store.stop()


def warm_up(target: FuzzTarget) -> None:
    """Every kind of input a few times: imports, caches and allocator pools fill up here."""
    for _ in range(3):
        for payload in ACTION_EXAMPLES + [MARKER, b'{"action":"get_queue_status"}', b"x",
                                          b'{"action":"subscribe","task_ids":["a"]}',
                                          f'{{"action":"resume","last_event_id":'
                                          f'"{target.history_ids[0]}"}}'.encode()]:
            target.answer(payload, protocol_answers(payload))
        target.drop_peer()
        for frames in FRAME_EXAMPLES:
            peer = target.connect()
            read_message(peer)
            observe(peer, frames + [Frame(OPCODE_TEXT, MARKER)],
                    tornado_answers(frames + [Frame(OPCODE_TEXT, MARKER)]))
            peer.close()


FUZZ_RUNS = {"actions": fuzz_actions, "query": fuzz_query, "frames": fuzz_frames}


def run_fuzz(target: FuzzTarget, name: str, **options) -> None:
    target.fuzzed.add(name)  # even if it fails: the last test then does not run it again
    FUZZ_RUNS[name](target, **options)


def test_every_client_action_gets_a_documented_answer(fuzz_server):
    run_fuzz(fuzz_server, "actions")


def test_query_arguments_resume_or_get_invalid_argument_and_tokens_are_ignored(fuzz_server):
    run_fuzz(fuzz_server, "query")


def test_malformed_frames_are_refused_as_tornado_does(fuzz_server):
    run_fuzz(fuzz_server, "frames")


def test_after_the_fuzz_the_server_serves_logs_no_error_and_kept_its_memory(fuzz_server):
    for name in [name for name in FUZZ_RUNS if name not in fuzz_server.fuzzed]:
        try:  # run alone: fuzz first, briefly
            run_fuzz(fuzz_server, name, max_examples=50)
        except Exception:  # noqa: BLE001 - that run's own test reports it; this one
            pass           # checks what it left behind

    peer = fuzz_server.connect()
    try:
        assert read_message(peer)["type"] == "queue_status"
        emitter = Emitter(fuzz_server.redis_url)
        emitter.emit(task_events.task_started("after-fuzz", "AFTER-FUZZ"))
        event = read_message(peer)
        while event["type"] == "queue_status":
            event = read_message(peer)
        assert (event["type"], event["data"]["task_id"]) == ("task_started", "after-fuzz")

        # Every socket the fuzz opened is gone within one heartbeat round
        # (Tornado drops some without calling on_close; a write finds them).
        deadline = time.monotonic() + 2 * float(SERVER_ENV["NOTIFY_PING_INTERVAL"]) + 2
        while fuzz_server.open_connections() != 1 and time.monotonic() < deadline:
            send(peer, client_frame(OPCODE_TEXT, MARKER))
            while read_message(peer)["type"] != "pong":
                pass
            time.sleep(0.2)
        assert fuzz_server.open_connections() == 1
    finally:
        peer.close()

    output = fuzz_server.child.output
    errors = [line for line in output if "Traceback" in line or " ERROR " in line]
    raised = [line for line in output if re.match(r"\w+(Error|Exception)\b", line)]
    assert not errors, (errors[:3], raised[:3], str(fuzz_server.child.log_path))
    growth = fuzz_server.rss - fuzz_server.rss_after_warm_up
    assert growth < 50 * 2**20, f"RSS grew by {growth / 2**20:.1f} MiB during the fuzz"
