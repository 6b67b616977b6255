"""The OpenAPI document at /api/openapi.json: valid OpenAPI 3.1, naming every
`/api/` route, and describing what the handlers really answer (a real server,
real Redis, records written by the workers' emitter)."""

import json
import re
import uuid

from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from handlers import make_application
from notify_server.protocol import task_events as ev
from notify_server.protocol.emit_script import STATUSES
from notify_server.records.record import FIELDS
from notify_server.worker.emitter import Emitter
from tests.support.http_probe import get


def fetch(port, path):
    response = get(port, path)
    return response.status, json.loads(response.body)


def checker(document):
    registry = Registry().with_resource(
        "urn:notify-openapi", Resource.from_contents(document, default_specification=DRAFT202012))

    def check(path, status, body):
        """`body` against the schema the document gives `path`'s GET answering `status`."""
        operation = document["paths"][path]["get"]
        answer = operation["responses"][str(status)]
        pointer = "/paths/" + path.replace("~", "~0").replace("/", "~1") + \
            f"/get/responses/{status}"
        if "$ref" in answer:
            pointer = answer["$ref"][1:]
            answer = registry.contents("urn:notify-openapi")
            for part in pointer.strip("/").split("/"):
                answer = answer[part]
        schema = {"$ref": f"urn:notify-openapi#{pointer}/content/application~1json/schema"}
        errors = list(Draft202012Validator(schema, registry=registry).iter_errors(body))
        assert not errors, (path, status, [error.message for error in errors])
    return check


def test_the_document_is_openapi_3_1_and_names_every_api_route(server_port):
    status, document = fetch(server_port, "/api/openapi.json")
    assert status == 200 and document["openapi"].startswith("3.1")
    validate_openapi(document)
    routes = {rule.matcher.regex.pattern for rule in make_application(
        None, allowed_origins=(), max_message_size=1).wildcard_router.rules}
    api = {re.sub(r"\(\[\^/\]\+\)", "{task_id}", pattern.rstrip("$").replace("/?", ""))
           for pattern in routes if pattern.startswith("/api/") and pattern != "/api/.*$"}
    assert api == set(document["paths"])
    record = document["components"]["schemas"]["Record"]
    assert tuple(record["properties"]) == FIELDS and record["required"] == list(FIELDS)
    assert record["properties"]["status"]["enum"] == list(STATUSES)


def test_what_the_handlers_answer_is_what_the_document_says(server_port, redis_server):
    check = checker(fetch(server_port, "/api/openapi.json")[1])
    emitter = Emitter(redis_server.url)
    done, failed = f"oa-{uuid.uuid4().hex}", f"oa-{uuid.uuid4().hex}"
    emitter.emit(ev.task_received(done, "OA-1", "w1"), record={"attempt": 0, "name": "tasks.oa"})
    emitter.emit(ev.task_started(done, "OA-1"), record={"attempt": 0, "worker": "w1"})
    emitter.emit(ev.task_progress(done, "OA-1", 1, 2, "half"))
    emitter.emit(ev.task_completed(done, "OA-1", "ok"), record={"attempt": 0})
    emitter.emit(ev.task_failed(failed, 7, "ValueError: boom"), record={"attempt": 2})
    assert emitter.flush()

    for path, expected in ((f"/api/tasks/{done}", 200), (f"/api/tasks/{failed}", 200),
                           ("/api/tasks/no-such-task", 404), ("/api/tasks/" + "x" * 256, 400)):
        status, body = fetch(server_port, path)
        assert status == expected, (path, body)
        check("/api/tasks/{task_id}", status, body)
    assert fetch(server_port, f"/api/tasks/{done}")[1]["data"]["progress"]["percent"] == 50.0

    for query, expected in (("", 200), ("?status=failed&limit=1", 200), ("?q=OA-", 200),
                            ("?limit=0", 400), ("?bogus=1", 400), ("?cursor=%21", 400)):
        status, body = fetch(server_port, "/api/tasks" + query)
        assert status == expected, (query, body)
        check("/api/tasks", status, body)

    for query, expected in (("", 200), ("?minutes=5", 200), ("?minutes=999", 400)):
        status, body = fetch(server_port, "/api/tasks/stats/minutes" + query)
        assert status == expected, (query, body)
        check("/api/tasks/stats/minutes", status, body)

    status, body = fetch(server_port, "/api/tasks/queue/status")
    assert status in (200, 503)
    check("/api/tasks/queue/status", status, body)
