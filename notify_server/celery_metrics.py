"""What relayed events and the queue snapshot count as, under celery-exporter's names. Pure.

The metrics adapter (`metrics.py`) asks `TaskCounter.count` what one task
event adds to `celery_task_<state>_total` and `celery_task_runtime`, and
`worker_gauges` / `queue_lengths` what the shared snapshot shows as
`celery_worker_up`, `celery_worker_tasks_active` and `celery_queue_length`.
Label values follow celery-exporter: `hostname` is the host part of a
worker's node name (`celery@host1` gives `host1`), a failure's `exception`
its exception class. Which process counts is the server's rule (the lease
holder; README, "Metrics"), not this module's.
"""

import dataclasses
import math
import re
from typing import Any, Dict, Optional, Tuple

from notify_server.protocol import task_events as events
from notify_server.protocol.stream import Event

# Task event type -> the state in celery-exporter's counter name.
STATES = {events.TASK_RECEIVED: "received", events.TASK_STARTED: "started",
          events.TASK_COMPLETED: "succeeded", events.TASK_FAILED: "failed",
          events.TASK_RETRYING: "retried", events.TASK_REVOKED: "revoked",
          events.TASK_REJECTED: "rejected"}
SUCCEEDED, FAILED = "succeeded", "failed"

# prometheus_client's (and so celery-exporter's) default histogram buckets, in seconds.
DEFAULT_RUNTIME_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                           7.5, 10.0)

UNKNOWN = "unknown"                   # an event whose writer gave no name or worker
UNKNOWN_EXCEPTION = "UnknownException"  # celery-exporter's word for a reason it cannot read
# Distinct task names counted under their own label; later ones are counted as OTHER,
# so a writer inventing names cannot grow /metrics without bound.
MAX_NAMES = 1000
OTHER = "other"
MAX_LABEL = 200

# "ValueError: text" (the hook), "ValueError('text')" (the bridge: Celery's repr), "ValueError".
_EXCEPTION = re.compile(r"([A-Z]\w*)(?:\(|: |$)")


@dataclasses.dataclass(frozen=True)
class Counted:
    """What one event adds: 1 to `celery_task_<state>_total{labels}` (with
    `exception` too for a failure), and for a success with a known runtime
    one observation of `celery_task_runtime{labels}`."""

    state: str
    labels: Tuple[str, ...]           # name, then hostname when that label is on
    exception: Optional[str] = None   # for `failed` only
    runtime: Optional[float] = None   # for `succeeded` only, when known


class TaskCounter:
    """Turns task events into `Counted`; remembers the task names it has seen
    (at most `max_names`). With `hostname_label`, labels are (name, hostname)."""

    def __init__(self, hostname_label: bool, max_names: int = MAX_NAMES):
        self.hostname_label = hostname_label
        self._max_names = max_names
        self._names: set = set()

    @property
    def label_names(self) -> Tuple[str, ...]:
        return ("name", "hostname") if self.hostname_label else ("name",)

    def count(self, event: Event) -> Optional[Counted]:
        """What `event` counts as, or None (progress reports, worker events,
        types of other writers). The name, worker and runtime come from the
        `meta` the emit script added; without it the name is `unknown`."""
        state = STATES.get(event.type)
        if state is None:
            return None
        meta = event.meta or {}
        labels: Tuple[str, ...] = (self._name(meta.get("name")),)
        if self.hostname_label:
            worker = _label(meta.get("worker"))
            labels += (UNKNOWN if worker is None else hostname_of(worker),)
        if state == FAILED:
            return Counted(state, labels, exception=exception_of(event.data.get("message")))
        if state == SUCCEEDED:
            return Counted(state, labels, runtime=_seconds(meta.get("runtime")))
        return Counted(state, labels)

    def _name(self, value: Any) -> str:
        name = _label(value)
        if name is None:
            return UNKNOWN
        if name not in self._names:
            if len(self._names) >= self._max_names:
                return OTHER
            self._names.add(name)
        return name


def hostname_of(worker: str) -> str:
    """The host part of a Celery node name, as celery-exporter labels it
    (`celery@host1` gives `host1`; a name without `@` is the host)."""
    return worker.split("@", 1)[1] if "@" in worker else worker


def exception_of(message: Any) -> str:
    """The exception class a `task_failed` message names, else UnknownException."""
    match = _EXCEPTION.match(message) if isinstance(message, str) else None
    return match.group(1) if match else UNKNOWN_EXCEPTION


def worker_gauges(data: dict) -> Tuple[Dict[str, int], Dict[str, int]]:
    """`celery_worker_up` and `celery_worker_tasks_active` by hostname, from
    queue data with `worker_states` (`queue.views.with_workers`).

    A worker is up while it is online; when the snapshot is stale (no worker
    answered the last poll) only a worker whose heartbeats the bridge still
    hears counts as up. Several workers on one host share its series, as in
    celery-exporter: up if any is, their active tasks summed; a host that is
    not up has 0 active tasks."""
    stale = data.get("stale", False)
    active: Dict[str, int] = {}
    for entry in data.get("active_tasks", ()):
        worker = entry.get("worker")
        if isinstance(worker, str):
            active[worker] = active.get(worker, 0) + 1
    up: Dict[str, int] = {}
    tasks: Dict[str, int] = {}
    for state in data.get("worker_states", ()):
        alive = state["online"] and (not stale or state.get("last_heartbeat") is not None)
        host = hostname_of(state["name"])
        up[host] = max(up.get(host, 0), int(alive))
        tasks[host] = tasks.get(host, 0) + (active.get(state["name"], 0) if alive else 0)
    return up, tasks


def queue_lengths(data: dict) -> Dict[str, int]:
    """`celery_queue_length` by queue name: the messages waiting in the broker
    (queues whose depth is unknown, `waiting: null`, are left out)."""
    return {queue["name"]: queue["waiting"] for queue in data.get("queues", ())
            if isinstance(queue.get("waiting"), int)}


def _label(value: Any) -> Optional[str]:
    if not isinstance(value, str) or not value:
        return None
    return value[:MAX_LABEL]


def _seconds(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value >= 0 else None
