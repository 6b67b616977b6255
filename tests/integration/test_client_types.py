"""notify-client's TypeScript declarations (clients/notify-client/index.d.ts) hold
against the server, checked by the TypeScript compiler in strict mode.

- Names: the unions of message types, actions, error codes, statuses and record
  keys, and the close codes, equal the server's own lists (`notify_server.protocol`,
  `records.record`), written into TypeScript from them.
- Shapes: every kind of message a real server sends (a Celery worker with the
  hook, the Celery event bridge, token mode) goes into a TypeScript file as
  `const m = <its JSON> satisfies MessageOfType<its type>`: a key the declarations
  lack, a key they require that the server did not send, or another JSON type
  fails the compile.
- The module: what notify-client.js exports at run time is what the declarations
  declare, its `CloseCode` is the server's, and the server serves that very file.
"""

import json
import re
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest
from celery import Celery
from tornado.httpclient import AsyncHTTPClient

from notify_server.protocol import close_codes, messages, task_events
from notify_server.protocol.emit_script import STATUS_OF, STATUSES
from notify_server.protocol.stream import relayable_type
from notify_server.records.record import FIELDS
from notify_server.worker.emitter import Emitter
from tests.support.client import WsClient, of_task, queue_status_where
from tests.support.http_probe import wait_for_bridge
from tests.support.processes import start_server, start_worker
from tests.support.tasks import submit, unique_avid
from tests.support.tokens import SECRET, sign
from tests.support.typescript import CLIENT_DIR, typecheck

CONSUMER = Path(__file__).with_name("notify_client_consumer.ts")
CLIENT_FILE = CLIENT_DIR / "notify-client.js"

EVENT_TYPES = sorted(value for name, value in vars(task_events).items()
                     if name.isupper() and isinstance(value, str) and relayable_type(value))
SERVER_TYPES = sorted([*EVENT_TYPES, *messages.TYPES])
CLOSE_CODES = {name: value for name, value in vars(close_codes).items()
               if name.isupper() and type(value) is int}

PRELUDE = """\
import type * as Client from 'notify-client';
import type { MessageOfType } from 'notify-client';
type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends (<T>() => T extends B ? 1 : 2)
  ? true : false;
declare function same<A, B>(proof: Equal<A, B>): void;
"""


def union(values) -> str:
    return " | ".join(json.dumps(value) for value in sorted(values)) or "never"


def same(declared: str, expected: str, what: str) -> str:
    """A TypeScript line that compiles only when type `declared` is exactly `expected`."""
    return f"same<{declared}, {expected}>(true);  // {what}\n"


def test_the_declarations_name_exactly_the_servers_types_actions_codes_and_record_keys(tmp_path):
    checks = [
        same("Client.ServerMessageType", union(SERVER_TYPES),
             "task_events' task_ and worker_ types, and messages.TYPES"),
        same("Client.TaskEventType", union(STATUS_OF), "emit_script.STATUS_OF"),
        same("Client.WorkerEventType", union(task_events.WORKER_EVENTS), "WORKER_EVENTS"),
        same("Client.TaskStatus", union(STATUSES), "emit_script.STATUSES"),
        same("Client.ActionName", union(messages.ACTIONS), "messages.ACTIONS"),
        same("Client.ErrorCode", union(messages.ERROR_CODES), "messages.ERROR_CODES"),
        same("keyof Client.TaskRecord", union(FIELDS), "records.record.FIELDS"),
        same("Client.CloseCode", " | ".join(map(str, sorted(set(CLOSE_CODES.values())))),
             "close_codes"),
        same("typeof Client.CloseCode",
             "{ " + " ".join(f"readonly {name}: {code};" for name, code in CLOSE_CODES.items())
             + " }", "close_codes, by name"),
        *(same(f"MessageOfType<{json.dumps(kind)}>['data']['status']", json.dumps(status),
               f"the status of {kind}") for kind, status in STATUS_OF.items()),
    ]
    source = PRELUDE + "".join(checks)
    errors = typecheck(tmp_path, {"names.ts": source})
    assert errors == "", cited(errors, source)


def cited(errors: str, source: str) -> str:
    """tsc's `errors`, each followed by the line of `source` it names."""
    lines = source.splitlines()
    explained = []
    for error in errors.splitlines():
        explained.append(error)
        match = re.match(r"[^(]+\((\d+),\d+\)", error)
        if match and int(match[1]) <= len(lines):
            explained.append("    " + lines[int(match[1]) - 1])
    return "\n".join(explained)


def test_the_declarations_refuse_a_message_that_drifted(tmp_path):
    """The control of the shape check: `satisfies` on a literal is exact."""
    good = {"type": "task_progress", "id": "1703001234567-0",
            "data": {"task_id": "t-1", "avid": "SSIS-950", "status": "progress",
                     "current": 3, "total": 10, "percent": 30.0, "message": "3 of 10"}}
    drifts = {
        "extra_key": {**good, "data": {**good["data"], "eta_seconds": 4}},
        "missing_key": {**good, "data": {k: v for k, v in good["data"].items() if k != "message"}},
        "other_type": {**good, "data": {**good["data"], "percent": "30%"}},
        "other_status": {**good, "data": {**good["data"], "status": "started"}},
        "bad_id": {**good, "id": "latest"},
        "unknown_message": {"type": "task_uploaded", "data": {}},
    }
    assert typecheck(tmp_path, {"good.ts": shapes_source([good])}) == ""
    (tmp_path / "good.ts").unlink()
    for name, message in drifts.items():
        errors = typecheck(tmp_path, {f"{name}.ts": shapes_source([message])})
        assert f"{name}.ts(" in errors, (name, errors)
        (tmp_path / f"{name}.ts").unlink()


def shapes_source(captured) -> str:
    """TypeScript asserting each message is exactly a message of its type."""
    lines = [PRELUDE]
    for number, message in enumerate(captured):
        lines.append(f"export const m{number} = {json.dumps(message, ensure_ascii=False)} "
                     f"satisfies MessageOfType<{json.dumps(message.get('type'))}>;\n")
    return "".join(lines)


def test_a_strict_consumer_of_the_client_api_compiles(tmp_path):
    assert typecheck(tmp_path, {"consumer.ts": CONSUMER.read_text()}) == ""


# What the README's hook uses of React, declared as @types/react does (React ships no types).
REACT_STUB = """\
declare module 'react' {
  type SetState<S> = (value: S | ((previous: S) => S)) => void;
  export function useState<S>(initial: S | (() => S)): [S, SetState<S>];
  export function useEffect(effect: () => void | (() => void),
                            deps?: readonly unknown[]): void;
}
"""


def test_the_readmes_react_hook_compiles_against_the_declarations(tmp_path):
    readme = (CLIENT_DIR.parents[1] / "README.md").read_text()
    [hook] = [block for block in re.findall(r"^```ts\n(.*?)^```", readme, re.S | re.M)
              if "export function useTaskEvents" in block]
    errors = typecheck(tmp_path, {"react.d.ts": REACT_STUB, "useTaskEvents.ts": hook})
    assert errors == "", cited(errors, hook)


def test_the_modules_exports_are_the_declared_ones_and_its_close_codes_the_servers(tmp_path):
    try:
        result = subprocess.run(
            ["node", "--input-type=module", "-e",
             f"const m = await import({json.dumps(CLIENT_FILE.as_uri())});"
             "console.log(JSON.stringify({names: Object.keys(m), CloseCode: m.CloseCode}));"],
            capture_output=True, text=True, timeout=60)
    except OSError as exc:
        pytest.fail(f"cannot run node ({exc}); the client tests need Node.js on PATH")
    assert result.returncode == 0, result.stderr
    module = json.loads(result.stdout)

    assert module["CloseCode"] == CLOSE_CODES
    source = PRELUDE + same("keyof typeof Client", union(module["names"]),
                            "notify-client.js's exports")
    errors = typecheck(tmp_path, {"exports.ts": source})
    assert errors == "", cited(errors, source)


# -- what a running server sends ------------------------------------------------------------

@pytest.fixture
def bridged_token_server(make_redis):
    """A token-mode server with the Celery event bridge on a Redis of its own,
    so that the fake events below reach no other test; its worker is started
    by the test (worker events come only with a start)."""
    redis = make_redis()
    child, port = start_server(redis.url, "--celery-events", name="types-server",
                               env={"NOTIFY_AUTH_SECRET": SECRET})
    wait_for_bridge(port)
    yield redis.url, port
    child.stop()


async def has_received(client: WsClient, predicate) -> None:
    """Until `client` has a message `predicate` accepts, among those it read already or next."""
    if not any(map(predicate, client.received)):
        await client.wait_for(predicate)


def fetch_json(url: str, token: str) -> dict:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


async def test_every_message_a_running_server_sends_compiles_against_the_declarations(
        bridged_token_server, tmp_path):
    redis_url, port = bridged_token_server
    producer = Celery("types-producer", broker=redis_url, set_as_current=False)
    token = sign("types", admin=True, ttl=600)
    events = await WsClient.connect(port, f"token={token}")
    actions = await WsClient.connect(port, f"token={token}")
    await events.wait_for(lambda m: m["type"] == "queue_status")
    await actions.wait_for(lambda m: m["type"] == "queue_status")

    worker_name = f"types-{uuid.uuid4().hex[:6]}@localhost"
    worker = start_worker(redis_url, worker_name, concurrency=1, args=["-E"])
    try:
        await has_received(events, lambda m: m["type"] == "worker_online"
                           and m["data"]["worker"] == worker_name)
        # One worker process: the first task runs, the next wait reserved, one is
        # scheduled, and is revoked before its countdown ends.
        avid = unique_avid("TYPES")
        running = submit(producer, avid, seconds=4.0)
        waiting = submit(producer, avid, seconds=0.2)
        scheduled = submit(producer, avid, seconds=0.2, countdown=8)
        failing = submit(producer, avid, seconds=0.2, fail=True)
        filled = set()

        def every_list_filled(data: dict) -> bool:
            filled.update(name for name in ("active_tasks", "reserved_tasks", "scheduled_tasks")
                          if data[name])
            return len(filled) == 3
        await has_received(events, queue_status_where(every_list_filled))
        producer.control.revoke(scheduled)
        for task_id, kind in ((running, "task_completed"), (waiting, "task_completed"),
                              (failing, "task_failed"), (scheduled, "task_revoked")):
            await has_received(events, of_task(task_id, kind))

        # The shapes the bridge and the hook write but a demo task does not cause.
        emitter = Emitter(redis_url)
        extra = f"types-extra-{uuid.uuid4().hex[:6]}"
        for event in (task_events.task_retrying(extra, 7, "ConnectionError: retry in 1s"),
                      task_events.task_rejected(extra, 7, "requeued"),
                      task_events.task_progress(extra, None, 0, 0, ""),
                      task_events.worker_offline("gone@nowhere", 1703001234.5,
                                                 "heartbeats stopped")):
            emitter.emit(event)
        assert emitter.flush(10)
        await has_received(events, lambda m: m["type"] == "worker_offline")
    finally:
        worker.stop()
        producer.close()
    await has_received(events, lambda m: m["type"] == "worker_offline"
                       and m["data"]["worker"] == worker_name)

    # Every reply: records, pong, errors, resync, refreshed.
    for frame in ({"action": "get_task", "task_id": running}, {"action": "ping"},
                  {"action": "get_task", "task_id": "no-such-task"}, "not json", "[]", {},
                  {"action": "unsubscribe"}, b"\x00", {"action": "subscribe"},
                  {"action": "refresh", "token": "not-a-token"},
                  {"action": "refresh", "token": sign("types", admin=True, ttl=900)},
                  {"action": "resume", "last_event_id": "1-0"},
                  {"action": "subscribe", "task_ids": [failing, "no-such-task"]},
                  {"action": "ping"}):
        await actions.send(frame)
    await actions.wait_for(lambda m: m["type"] == "queue_status")  # the resume's
    await actions.wait_for(lambda m: m["type"] == "task" and m["data"]["task_id"] == failing)
    await actions.wait_for(lambda m: m["type"] == "pong")
    events.close()
    actions.close()

    captured = events.received + actions.received
    assert sorted({message["type"] for message in captured}) == SERVER_TYPES
    assert {message["data"]["code"] for message in captured if message["type"] == "error"} == {
        "not_found", "invalid_json", "not_an_object", "missing_action", "unknown_action",
        "binary_not_supported", "invalid_argument", "invalid_token"}

    rest = f"http://127.0.0.1:{port}/api/tasks/"
    record = fetch_json(f"{rest}{failing}", token)["data"]
    page = fetch_json(f"{rest}?limit=5", token)["data"]
    minutes = fetch_json(f"{rest}stats/minutes?minutes=5", token)["data"]
    answers = (f"export const record = {json.dumps(record)} satisfies Client.TaskRecord;\n"
               f"export const page = {json.dumps(page)} satisfies Client.TaskPage;\n"
               f"export const minutes = {json.dumps(minutes['minutes'])} "
               "satisfies Client.MinuteCount[];\n")
    assert page["tasks"] and any(entry["completed"] for entry in minutes["minutes"])

    errors = typecheck(tmp_path, {"shapes.ts": shapes_source(distinct(captured)) + answers})
    assert errors == "", f"{errors}\n(compiled: {tmp_path / 'shapes.ts'})"


def distinct(captured):
    """One message per shape, so the file stays short."""
    seen, kept = set(), []
    for message in captured:
        shape = shape_of(message)
        if shape not in seen:
            seen.add(shape)
            kept.append(message)
    return kept


# Keys whose values the declarations spell out (string literal unions), kept in a shape.
LITERAL_KEYS = ("type", "status", "code", "reason")


def shape_of(value, key=None):
    """`value` with every leaf replaced by its JSON type, but the literal keys' values."""
    if isinstance(value, dict):
        return tuple(sorted((name, shape_of(item, name)) for name, item in value.items()))
    if isinstance(value, list):
        return ("list", frozenset(shape_of(item) for item in value))
    return value if key in LITERAL_KEYS else type(value).__name__


async def test_the_server_serves_the_packages_own_file_as_the_static_client(server_port):
    answer = await AsyncHTTPClient().fetch(
        f"http://127.0.0.1:{server_port}/static/notify-client.js")
    assert answer.body == CLIENT_FILE.read_bytes()
    assert answer.headers["Content-Type"] == "text/javascript"
