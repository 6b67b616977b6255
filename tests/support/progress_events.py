"""Numbered `task_progress` events, as the tests emit them, and the numbers a
client got back: the `number`th event of a stream tagged `tag` (its `avid`)
has task id `tag-number` and `current` = `number`."""

from typing import List

from notify_server.protocol import task_events
from tests.support.client import WsClient


def progress(tag: str, number: int, text: str = "") -> dict:
    """The `number`th event of the stream tagged `tag`."""
    return task_events.task_progress(f"{tag}-{number}", tag, number, 1_000_000, text)


def numbers(client: WsClient, tag: str) -> List[int]:
    """The numbers of `tag`'s progress events `client` received, in arrival order."""
    return [m["data"]["current"] for m in client.received
            if m["type"] == "task_progress" and m["data"]["avid"] == tag]
