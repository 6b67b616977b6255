"""Which history events become alerts: by status and by task name (pure)."""

import dataclasses
import fnmatch
import functools
from typing import FrozenSet, Optional, Tuple

from notify_server.protocol import task_events
from notify_server.protocol.stream import Event

# NOTIFY_ALERT_STATUSES's names, and the event type each stands for.
STATUS_TYPES = {
    "failed": task_events.TASK_FAILED,
    "revoked": task_events.TASK_REVOKED,
    "rejected": task_events.TASK_REJECTED,
    "retrying": task_events.TASK_RETRYING,
    "worker_offline": task_events.WORKER_OFFLINE,
}


def task_name(event: Event) -> Optional[str]:
    """The task's name as the emit script's `meta` gives it (docs/protocol.md
    6.1), or None when the event has none (a worker event, a bare emitter's)."""
    name = (event.meta or {}).get("name")
    return name if isinstance(name, str) and name else None


@dataclasses.dataclass(frozen=True)
class AlertRules:
    """`statuses`: names of `STATUS_TYPES`; `tasks`: fnmatch patterns on the
    task name, none meaning every event (named or not)."""

    statuses: Tuple[str, ...] = ("failed",)
    tasks: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [status for status in self.statuses if status not in STATUS_TYPES]
        if unknown:
            raise ValueError(f"unknown alert status {unknown[0]!r}")

    @functools.cached_property
    def types(self) -> FrozenSet[str]:
        """The event types the statuses stand for."""
        return frozenset(STATUS_TYPES[status] for status in self.statuses)

    def matches(self, event: Event) -> bool:
        """Whether `event` is alerted: its type is one of the statuses', and,
        when patterns are set, it has a name one of them matches (an event
        without a name matches only when no pattern is set)."""
        if event.type not in self.types:
            return False
        if not self.tasks:
            return True
        name = task_name(event)
        return name is not None and any(fnmatch.fnmatchcase(name, p) for p in self.tasks)
