"""The queue snapshot the poller's leader shares through Redis: its format.

Pure (orjson only). The leader writes `encode_snapshot(...)` to the
snapshot key and channel; every process reads it back with `decode_snapshot`.
"""

import orjson

from notify_server.protocol.names import TASK_LISTS


def encode_snapshot(data, stale_reason, broker_up: bool, leader: str) -> bytes:
    """One poll result, as every process reads it back."""
    return orjson.dumps({"data": data, "stale_reason": stale_reason, "broker": broker_up,
                         "leader": leader})


def decode_snapshot(payload: bytes) -> dict:
    """The leader's poll result as `encode_snapshot` gives it:
    ``{"data": queue data or null, "stale_reason": str or null, "broker": bool,
    "leader": str}``. Raises ValueError when it is not that."""
    try:
        shared = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if (not isinstance(shared, dict)
            or not isinstance(shared.get("data"), (dict, type(None)))
            or not isinstance(shared.get("stale_reason"), (str, type(None)))
            or not isinstance(shared.get("broker"), bool)):
        raise ValueError("not a queue snapshot")
    data = shared["data"]
    if data is not None and not all(isinstance(data.get(key), list)
                                    for key in (*TASK_LISTS, "workers")):
        raise ValueError("queue snapshot without its lists")
    return shared
