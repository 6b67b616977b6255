"""Task records as a client reads them (REST and the socket's `get_task`), and
the history stream's events of one task, to hold a record against."""

import json
import urllib.parse
from typing import Dict, List, Optional, Tuple

import redis

from notify_server.protocol.names import Keys
from tests.support.client import WsClient
from tests.support.http_probe import get_json

HISTORY = Keys().history_stream
FINAL_TYPES = ("task_completed", "task_failed", "task_revoked", "task_rejected")


async def rest_record(port: int, task_id: str, token: Optional[str] = None) -> Tuple[int, dict]:
    """GET /api/tasks/<task_id>: (status, envelope)."""
    path = f"/api/tasks/{urllib.parse.quote(task_id, safe='')}"
    if token:
        path += f"?token={token}"
    return await get_json(port, path)


async def list_page(port: int, **params) -> Tuple[int, dict]:
    """GET /api/tasks with `params`: (status, envelope)."""
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
    return await get_json(port, "/api/tasks" + (f"?{query}" if query else ""))


async def walk(port: int, token: Optional[str] = None, limit: int = 200,
               **params) -> List[dict]:
    """Every record a cursor walk of GET /api/tasks returns, in order."""
    records, cursor = [], None
    for _ in range(10_000):
        status, body = await list_page(port, token=token, limit=limit, cursor=cursor,
                                       **params)
        assert status == 200, body
        records += body["data"]["tasks"]
        cursor = body["data"]["next"]
        if cursor is None:
            return records
    raise AssertionError("the cursor walk never ended")


async def socket_record(client: WsClient, task_id: str) -> dict:
    """`get_task` on `client`: the reply (`task` or `error`)."""
    await client.send({"action": "get_task", "task_id": task_id})
    return await client.wait_for(lambda m: m["type"] in ("task", "error"))


def history_of(redis_url: str, task_id: str) -> List[Tuple[str, str]]:
    """(id, type) of every history event of `task_id`, in stream order."""
    client = redis.Redis.from_url(redis_url)
    try:
        found = []
        for entry_id, fields in client.xrange(HISTORY):
            event = json.loads(fields[b"event"])
            if event.get("data", {}).get("task_id") == task_id:
                found.append((entry_id.decode(), event["type"]))
        return found
    finally:
        client.close()


def first_ids(redis_url: str) -> Dict[str, str]:
    """task id -> the stream id of its first history event."""
    client = redis.Redis.from_url(redis_url)
    try:
        found: Dict[str, str] = {}
        for entry_id, fields in client.xrange(HISTORY):
            task_id = json.loads(fields[b"event"]).get("data", {}).get("task_id")
            if isinstance(task_id, str):
                found.setdefault(task_id, entry_id.decode())
        return found
    finally:
        client.close()


def stream_key(stream_id: str) -> Tuple[int, int]:
    milliseconds, sequence = stream_id.split("-")
    return int(milliseconds), int(sequence)
