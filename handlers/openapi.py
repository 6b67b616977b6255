"""`GET /api/openapi.json`: the OpenAPI 3.1 document of every `/api/` endpoint.

The document is built here, once, from the same names the code uses (the
record's fields, the status words, the query parameters and their bounds),
so it cannot drift from them; tests/integration/test_openapi.py validates it
and checks the handlers' real answers against it.
"""

import orjson

from notify_server.protocol.emit_script import STATUSES
from notify_server.protocol.messages import MAX_TASK_ID
from notify_server.records.query import DEFAULT_LIMIT, MAX_FILTER, MAX_LIMIT
from notify_server.records.record import FIELDS

from .envelope import JsonHandler
from .tasks import MAX_MINUTES

NUMBER_OR_NULL = {"type": ["number", "null"]}
STRING_OR_NULL = {"type": ["string", "null"]}
SUBJECT = {"description": "the task's subject (`avid`): a JSON scalar or null",
           "type": ["string", "number", "boolean", "null"]}
STREAM_ID = {"type": "string", "pattern": r"^\d+-\d+$",
             "description": "a Redis stream id, `<milliseconds>-<sequence>`"}

RECORD_PROPERTIES = {
    "task_id": {"type": "string"},
    "avid": SUBJECT,
    "name": {**STRING_OR_NULL, "description": "the Celery task name"},
    "status": {"type": "string", "enum": list(STATUSES)},
    "worker": STRING_OR_NULL,
    "received_at": {**NUMBER_OR_NULL, "description": "Unix seconds"},
    "started_at": {**NUMBER_OR_NULL, "description": "Unix seconds"},
    "finished_at": {**NUMBER_OR_NULL, "description": "Unix seconds"},
    "runtime": {**NUMBER_OR_NULL, "description": "seconds"},
    "message": STRING_OR_NULL,
    "progress": {"oneOf": [{"type": "null"}, {
        "type": "object", "required": ["current", "total", "percent", "message"],
        "properties": {"current": NUMBER_OR_NULL, "total": NUMBER_OR_NULL,
                       "percent": NUMBER_OR_NULL, "message": {"type": "string"}}}]},
    "retries": {"type": "integer", "minimum": 0},
    "events": {"type": "array", "items": {
        "type": "object", "required": ["type", "time", "id"], "additionalProperties": False,
        "properties": {"type": {"type": "string"}, "time": NUMBER_OR_NULL, "id": STREAM_ID}}},
    "events_dropped": {"type": "integer", "minimum": 0},
    "last_id": STREAM_ID,
}

TASK_ENTRY = {"type": "object", "required": ["task_id", "avid", "worker"],
              "properties": {"task_id": {"type": "string"}, "avid": SUBJECT,
                             "worker": {"type": "string"}}}


def envelope(data_schema: dict) -> dict:
    return {"type": "object", "required": ["code", "message", "data"],
            "additionalProperties": False,
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"},
                           "data": data_schema}}


def answer(description: str, data_schema: dict) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": envelope(data_schema)}}}


def error(description: str) -> dict:
    return {"$ref": f"#/components/responses/{description}"}


TOKEN = {"name": "token", "in": "query", "required": False,
         "description": "token mode: a JWT (or send it as `Authorization: Bearer`)",
         "schema": {"type": "string"}}
TEXT_FILTER = {"type": "string", "minLength": 1, "maxLength": MAX_FILTER}
UNIX_SECONDS = {"type": "number", "minimum": 0, "maximum": 9999999999}


def document() -> dict:
    """The OpenAPI 3.1 document."""
    errors = {"400": error("BadRequest"), "401": error("Unauthorized"),
              "503": error("Unavailable")}
    return {
        "openapi": "3.1.0",
        "info": {"title": "notify-server", "version": "1",
                 "description": "REST endpoints of notify-server; the WebSocket protocol is "
                                "docs/protocol.md. Every answer, errors included, is the "
                                "envelope {code, message, data}, code equal to the HTTP status."},
        "components": {
            "schemas": {
                "Record": {"type": "object", "required": list(FIELDS),
                           "additionalProperties": False, "properties": RECORD_PROPERTIES},
                "QueueStatus": {"type": "object", "required": [
                    "active_tasks", "scheduled_tasks", "reserved_tasks", "workers", "queues",
                    "updated_at", "stale"], "properties": {
                    "active_tasks": {"type": "array", "items": {**TASK_ENTRY, "properties": {
                        **TASK_ENTRY["properties"], "time_start": NUMBER_OR_NULL}}},
                    "scheduled_tasks": {"type": "array", "items": {**TASK_ENTRY, "properties": {
                        **TASK_ENTRY["properties"], "eta": STRING_OR_NULL}}},
                    "reserved_tasks": {"type": "array", "items": TASK_ENTRY},
                    "workers": {"type": "array", "items": {"type": "string"}},
                    "worker_states": {"type": "array", "items": {
                        "type": "object", "required": ["name", "online", "last_heartbeat"],
                        "properties": {"name": {"type": "string"},
                                       "online": {"type": "boolean"},
                                       "last_heartbeat": NUMBER_OR_NULL}}},
                    "queues": {"type": "array", "items": {
                        "type": "object", "required": ["name", "waiting"],
                        "properties": {"name": {"type": "string"},
                                       "waiting": {"type": ["integer", "null"]}}}},
                    "updated_at": NUMBER_OR_NULL,
                    "stale": {"type": "boolean"}}},
            },
            "responses": {
                "BadRequest": answer("a bad parameter: `message` starts with its name",
                                     {"type": "null"}),
                "Unauthorized": answer("token mode: no valid token", {"type": "null"}),
                "NotFound": answer("no such record the token may see (or an unknown path)",
                                   {"type": "null"}),
                "Unavailable": answer("Redis (records) or the broker (queue) cannot be read",
                                      {"type": "null"}),
            },
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "query": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
        "security": [{}, {"bearer": []}, {"query": []}],
        "paths": {
            "/api/tasks/queue/status": {"get": {
                "summary": "The queue snapshot (the seed's endpoint)",
                "parameters": [TOKEN],
                "responses": {"200": answer("the snapshot (`message` is `stale: <why>` when the "
                                            "last poll failed)",
                                            {"$ref": "#/components/schemas/QueueStatus"}),
                              "401": errors["401"], "503": errors["503"]}}},
            "/api/tasks/{task_id}": {"get": {
                "summary": "One task's record",
                "parameters": [{"name": "task_id", "in": "path", "required": True,
                                "schema": {"type": "string", "minLength": 1,
                                           "maxLength": MAX_TASK_ID}}, TOKEN],
                "responses": {"200": answer("the record", {"$ref": "#/components/schemas/Record"}),
                              "404": error("NotFound"), **errors}}},
            "/api/tasks": {"get": {
                "summary": "Task records, newest first, one page",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string",
                                                                 "enum": list(STATUSES)}},
                    {"name": "name", "in": "query", "schema": TEXT_FILTER},
                    {"name": "worker", "in": "query", "schema": TEXT_FILTER},
                    {"name": "q", "in": "query", "description": "a task id or subject prefix",
                     "schema": TEXT_FILTER},
                    {"name": "since", "in": "query", "schema": UNIX_SECONDS},
                    {"name": "until", "in": "query", "schema": UNIX_SECONDS},
                    {"name": "limit", "in": "query", "schema": {
                        "type": "integer", "minimum": 1, "maximum": MAX_LIMIT,
                        "default": DEFAULT_LIMIT}},
                    {"name": "cursor", "in": "query", "description": "`next` of a page",
                     "schema": {"type": "string"}},
                    TOKEN],
                "responses": {"200": answer("a page", {
                    "type": "object", "required": ["tasks", "next"], "additionalProperties": False,
                    "properties": {"tasks": {"type": "array",
                                             "items": {"$ref": "#/components/schemas/Record"}},
                                   "next": STRING_OR_NULL}}), **errors}}},
            "/api/tasks/stats/minutes": {"get": {
                "summary": "Tasks completed and failed per minute, oldest first",
                "parameters": [{"name": "minutes", "in": "query", "schema": {
                    "type": "integer", "minimum": 1, "maximum": MAX_MINUTES, "default": 60}},
                    TOKEN],
                "responses": {"200": answer("the counts", {
                    "type": "object", "required": ["minutes"], "properties": {"minutes": {
                        "type": "array", "items": {
                            "type": "object", "required": ["minute", "completed", "failed"],
                            "additionalProperties": False,
                            "properties": {"minute": {"type": "integer"},
                                           "completed": {"type": "integer", "minimum": 0},
                                           "failed": {"type": "integer", "minimum": 0}}}}}}),
                    **errors}}},
            "/api/openapi.json": {"get": {
                "summary": "This document", "security": [{}],
                "responses": {"200": {"description": "the OpenAPI document",
                                      "content": {"application/json": {}}}}}},
        },
    }


DOCUMENT = orjson.dumps(document())


class OpenApiHandler(JsonHandler):
    """`GET /api/openapi.json`: the document, as it is (no envelope)."""

    def get(self) -> None:
        self.finish(DOCUMENT)
