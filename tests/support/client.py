"""A WebSocket client that sees what a browser would: parsed JSON messages."""

import asyncio
import json
from typing import Callable, List, Optional

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect


class WsClient:
    def __init__(self, connection: WebSocketClientConnection):
        self.connection = connection
        self.received: List[dict] = []

    @classmethod
    async def connect(cls, port: int, query: str = "", host: str = "127.0.0.1",
                      path: str = "/ws/tasks/", headers: Optional[dict] = None,
                      max_message_size: int = 64 * 1024 * 1024) -> "WsClient":
        url = f"ws://{host}:{port}{path}" + (f"?{query}" if query else "")
        request = HTTPRequest(url, headers=headers or {}, connect_timeout=10, request_timeout=10)
        connection = await websocket_connect(request, max_message_size=max_message_size)
        return cls(connection)

    async def send(self, message) -> None:
        frame = message if isinstance(message, (str, bytes)) else json.dumps(message)
        await self.connection.write_message(frame, binary=isinstance(frame, bytes))

    async def next(self, timeout: float = 15.0) -> Optional[dict]:
        """The next message, or None when the server closed the socket."""
        frame = await asyncio.wait_for(self.connection.read_message(), timeout)
        if frame is None:
            return None
        message = json.loads(frame)
        self.received.append(message)
        return message

    async def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 20.0) -> dict:
        """Read until a message satisfies `predicate`; fails on timeout or close."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no matching message within {timeout} s; "
                                     f"got {self.received[-10:]}")
            try:
                message = await self.next(remaining)
            except asyncio.TimeoutError:
                continue
            if message is None:
                raise AssertionError(f"server closed the socket ({self.close_code}, "
                                     f"{self.close_reason}) while waiting")
            if predicate(message):
                return message

    async def seen_or_wait_for(self, predicate: Callable[[dict], bool],
                               timeout: float = 20.0) -> dict:
        """The first message already received that satisfies `predicate`, or
        the next one to arrive: for a message that may have come while the
        test was waiting for another."""
        for message in self.received:
            if predicate(message):
                return message
        return await self.wait_for(predicate, timeout)

    async def wait_closed(self, timeout: float = 20.0) -> int:
        """Read until the server closes the socket; returns the close code."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await asyncio.wait_for(self.connection.read_message(),
                                           max(0.01, deadline - loop.time()))
            if frame is None:
                return self.close_code

    @property
    def close_code(self) -> Optional[int]:
        return self.connection.close_code

    @property
    def close_reason(self) -> Optional[str]:
        return self.connection.close_reason

    def close(self) -> None:
        self.connection.close()


def of_task(task_id: str, kind: Optional[str] = None) -> Callable[[dict], bool]:
    return lambda m: (m.get("data", {}).get("task_id") == task_id
                      and (kind is None or m["type"] == kind))


def queue_status_where(predicate: Callable[[dict], bool]) -> Callable[[dict], bool]:
    return lambda m: m["type"] == "queue_status" and predicate(m["data"])
