"""Origin checks shared by the WebSocket and REST handlers."""

from typing import Iterable, Optional


def origin_allowed(origin: Optional[str], allowed: Iterable[str]) -> bool:
    """True when `origin` is listed in `allowed`, or `allowed` contains "*"."""
    allowed = tuple(allowed)
    return "*" in allowed or (origin is not None and origin.rstrip("/") in allowed)
