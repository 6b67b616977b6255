"""REST: task records (`GET /api/tasks/<task_id>`, `GET /api/tasks`) and the
per-minute counts (`GET /api/tasks/stats/minutes`); docs/protocol.md 5.5."""

import asyncio
import logging

from redis.exceptions import RedisError

from notify_server.protocol.messages import MAX_TASK_ID, valid_task_id
from notify_server.records.query import QueryError, parse_query

from .envelope import JsonHandler

log = logging.getLogger(__name__)

# How long a record read may take before the answer is 503.
READ_TIMEOUT = 3.0
MAX_MINUTES = 120


class RecordsHandler(JsonHandler):
    """The base of the record endpoints: the server, the token's scope, and
    503 in the envelope when Redis cannot be read."""

    def initialize(self, server) -> None:
        self.server = server

    async def read(self, awaitable):
        """`awaitable`'s result, or None after answering 503."""
        try:
            return await asyncio.wait_for(awaitable, READ_TIMEOUT)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            log.warning("task records could not be read for %s: %s", self.request.path,
                        exc or type(exc).__name__)
            self.send_envelope(503, "task records cannot be read now (Redis); try again", None)
            return None


class TaskHandler(RecordsHandler):
    """`GET /api/tasks/<task_id>`: 200 with the record; 404 for an unknown
    id and, the same, for a task the token's scope does not see; 400 for an
    id that is not one (over 255 characters, control characters)."""

    async def get(self, task_id: str) -> None:
        if not valid_task_id(task_id):
            self.send_envelope(400, f"task_id: 1 to {MAX_TASK_ID} characters, no control "
                                    "characters", None)
            return
        unknown = set(self.request.arguments) - {"token"}
        if unknown:
            self.send_envelope(400, f"{sorted(unknown)[0]}: unknown parameter; known: token",
                               None)
            return
        scope = self.scope_or_401(self.server)
        if scope is None:
            return
        record = await self.read(self.server.records.find(task_id, scope))
        if self._finished:
            return
        if record is None:
            self.send_envelope(404, "no record of this task", None)
        else:
            self.send_envelope(200, "success", record)


class TaskListHandler(RecordsHandler):
    """`GET /api/tasks?status=&name=&worker=&q=&since=&until=&limit=&cursor=`:
    the records the scope sees, newest first, ``{"tasks": [...], "next":
    cursor or null}``; 400 naming the parameter for an unknown one or a bad value."""

    async def get(self) -> None:
        try:
            query = parse_query(self.request.arguments)
        except QueryError as exc:
            self.send_envelope(400, str(exc), None)
            return
        scope = self.scope_or_401(self.server)
        if scope is None:
            return
        page = await self.read(self.server.records.page(query, scope.owners))
        if page is None:
            return
        records, following = page
        self.send_envelope(200, "success", {"tasks": [record for _, record in records],
                                            "next": following})


class TaskMinutesHandler(RecordsHandler):
    """`GET /api/tasks/stats/minutes?minutes=60`: tasks completed and failed
    in each of the last `minutes` (1 to 120) minutes, oldest first, of the
    tasks the scope sees."""

    async def get(self) -> None:
        unknown = set(self.request.arguments) - {"token", "minutes"}
        if unknown:
            self.send_envelope(400, f"{sorted(unknown)[0]}: unknown parameter; known: minutes, "
                                    "token", None)
            return
        if len(self.request.arguments.get("minutes", ())) > 1:
            self.send_envelope(400, "minutes: given more than once", None)
            return
        text = self.get_query_argument("minutes", "60")
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_MINUTES:
            self.send_envelope(400, f"minutes: a whole number from 1 to {MAX_MINUTES}", None)
            return
        scope = self.scope_or_401(self.server)
        if scope is None:
            return
        counts = await self.read(self.server.records.minutes(int(text), scope.owners))
        if counts is not None:
            self.send_envelope(200, "success", {"minutes": counts})
