"""Celery inspect replies turned into the seed's `queue_status` data, and the
snapshot the server shares between its handlers.

Pure: no Celery, Tornado or Redis imports. The poller feeds replies in;
handlers read `QueueState.data()`.
"""

from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional

from notify_server.protocol.task_events import owner_of, subject_of

TASK_LISTS = ("active_tasks", "scheduled_tasks", "reserved_tasks")

# Celery's inspect replies: {worker hostname: [task info dict, ...]} or None
# when no worker answered.
Replies = Optional[Dict[str, List[dict]]]

# Queue names one process remembers at most, the configured ones included: a
# name past this is never listed (a bound on what each poll reads and sends).
MAX_QUEUES = 1000


def _epoch(value: Any) -> Optional[float]:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _active_entry(worker: str, info: dict, args: tuple) -> dict:
    entry = _waiting_entry(worker, info, args)
    entry["time_start"] = _epoch(info.get("time_start"))
    return entry


def _waiting_entry(worker: str, info: dict, args: tuple) -> dict:
    subject_arg, owner_arg = args
    return {"task_id": info.get("id"),
            "avid": subject_of(info.get("args"), info.get("kwargs"), subject_arg),
            "worker": worker,
            "owner": owner_of(info.get("kwargs"), owner_arg)}


def _scheduled_entry(worker: str, item: dict, args: tuple) -> dict:
    # scheduled() wraps each request: {"eta": ..., "priority": ..., "request": {...}}
    request = item.get("request") if isinstance(item.get("request"), dict) else item
    entry = _waiting_entry(worker, request, args)
    entry["eta"] = item.get("eta")
    return entry


def _entries(replies: Replies, build, args: tuple) -> List[dict]:
    entries = []
    for worker in sorted(replies or {}):
        items = replies[worker]
        if not isinstance(items, list):
            continue
        entries.extend(build(worker, item, args) for item in items if isinstance(item, dict))
    return entries


def queue_names(reply: Replies) -> FrozenSet[str]:
    """The queue names in an `active_queues` inspect reply
    ({worker: [{"name": QUEUE, "exchange": ..., ...}, ...]})."""
    return frozenset(queue["name"] for queues in (reply or {}).values()
                     if isinstance(queues, list) for queue in queues
                     if isinstance(queue, dict) and isinstance(queue.get("name"), str))


def remember_queues(known: FrozenSet[str], found: Iterable[str],
                    cap: int = MAX_QUEUES) -> FrozenSet[str]:
    """`known` plus the names in `found`, the new ones in name order until
    there are `cap` names in all. A known name is never dropped: a queue
    that drained (or lost its workers) stays listed with 0 waiting."""
    room = max(0, cap - len(known))
    return known | frozenset(sorted(frozenset(found) - known)[:room])


def queue_list(depths: Optional[Mapping[str, Optional[int]]]) -> List[dict]:
    """`queues` of `queue_status`: ``{"name", "waiting"}`` by name."""
    return [{"name": name, "waiting": waiting} for name, waiting in sorted((depths or {}).items())]


def normalise(active: Replies, scheduled: Replies, reserved: Replies,
              depths: Optional[Mapping[str, Optional[int]]] = None,
              subject_arg: str = "avid", owner_arg: str = "user_id") -> dict:
    """Build the seed's `queue_status` data from three inspect replies and
    the broker's queue depths.

    The result holds `active_tasks`, `scheduled_tasks`, `reserved_tasks`,
    `workers` (every worker that answered any of the three, sorted) and
    `queues`: ``{"name", "waiting"}`` for each queue in `depths` (name ->
    messages waiting in the broker, None when unknown), sorted by name. Each
    task entry also holds its `owner` (kwargs[owner_arg], or None), which
    `for_scope` removes before a client sees it. `updated_at` and `stale` are
    added by `QueueState`.
    """
    args = (subject_arg, owner_arg)
    active_tasks = _entries(active, _active_entry, args)
    active_tasks.sort(key=lambda entry: (entry["time_start"] or 0.0, str(entry["task_id"])))
    return {
        "active_tasks": active_tasks,
        "scheduled_tasks": _entries(scheduled, _scheduled_entry, args),
        "reserved_tasks": _entries(reserved, _waiting_entry, args),
        "workers": sorted(set(active or {}) | set(scheduled or {}) | set(reserved or {})),
        "queues": queue_list(depths),
    }


def with_workers(data: dict, table: Optional[List[dict]]) -> dict:
    """`data` with `worker_states` (each worker by name: `online`,
    `last_heartbeat`) and `workers` following the Celery event bridge's
    `table` (`CeleryEventMapper.worker_states`; None when the bridge is off).

    Heartbeats are the fresher source: a worker the table has offline is not
    listed even if the last inspect poll still named it, and one sending
    heartbeats is listed even if it did not answer the poll. Workers the
    table does not know are online, with no heartbeat time.
    """
    known = {state["name"]: state for state in table or ()}
    online = {name for name, state in known.items() if state["online"]}
    workers = sorted((set(data["workers"]) - set(known)) | online)
    states = dict(known)
    for name in workers:
        states.setdefault(name, {"name": name, "online": True, "last_heartbeat": None})
    return {**data, "workers": workers, "worker_states": [states[name] for name in sorted(states)]}


def workers_moved(before: Optional[List[dict]], after: Optional[List[dict]]) -> bool:
    """Whether two worker tables differ in more than heartbeat times."""
    def shape(table):
        return {(state["name"], state["online"]) for state in table or ()}
    return shape(before) != shape(after)


def for_scope(data: dict, owners: Optional[FrozenSet[str]]) -> dict:
    """The queue data a client may see: every task (`owners` None: an admin
    or open mode) or only those whose owner is in `owners` (a task of no
    known owner is nobody's). Entries lose their internal `owner` field;
    nothing says how many tasks were left out. `workers` and `queues` are
    the same for every scope."""
    view = dict(data)
    for key in TASK_LISTS:
        view[key] = [{k: v for k, v in entry.items() if k != "owner"} for entry in data[key]
                     if owners is None or entry.get("owner") in owners]
    return view


def owners_of_tasks(data: dict) -> FrozenSet[str]:
    """Every owner with at least one task in `data`."""
    return frozenset(entry["owner"] for key in TASK_LISTS for entry in data[key]
                     if entry.get("owner") is not None)


class QueueState:
    """The last queue snapshot and whether it is current.

    Only the event-loop thread calls it. `update` returns whether clients need
    a new `queue_status`: true when the task lists, the workers, a queue's
    depth or the staleness changed, not when only `updated_at` moved.
    """

    def __init__(self) -> None:
        self._snapshot: Optional[dict] = None
        self._updated_at: Optional[float] = None
        self._stale_reason: Optional[str] = "no inspect poll has completed yet"

    @property
    def has_snapshot(self) -> bool:
        return self._snapshot is not None

    @property
    def stale_reason(self) -> Optional[str]:
        """Why the data is not current, or None when the last poll succeeded."""
        return self._stale_reason

    def update(self, snapshot: dict, at: float) -> bool:
        changed = snapshot != self._snapshot or self._stale_reason is not None
        self._snapshot, self._updated_at, self._stale_reason = snapshot, at, None
        return changed

    def set_queues(self, queues: List[dict]) -> None:
        """New queue depths from a poll no worker answered: the depths are
        current even when the task lists are not (tasks pile up in a queue
        most visibly when no worker is there)."""
        if self._snapshot is None:
            self._snapshot = {**{key: [] for key in TASK_LISTS}, "workers": []}
        self._snapshot = {**self._snapshot, "queues": queues}

    def mark_failed(self, reason: str) -> bool:
        """Record a failed poll; returns True when this turned the data stale."""
        was_fresh = self._stale_reason is None
        self._stale_reason = reason
        return was_fresh and self._snapshot is not None

    def adopt(self, data: Optional[dict], stale_reason: Optional[str]) -> bool:
        """Take over a snapshot polled elsewhere (the leader's `data()` and
        `stale_reason`, section "one poller" of the README); returns whether
        clients need a new `queue_status`, as `update` and `mark_failed` do."""
        if data is None:
            return self.mark_failed(stale_reason or "no inspect poll has completed yet")
        snapshot = {key: value for key, value in data.items()
                    if key not in ("updated_at", "stale")}
        if stale_reason is None:
            return self.update(snapshot, data.get("updated_at"))
        changed = snapshot != self._snapshot or self._stale_reason is None
        self._snapshot, self._updated_at = snapshot, data.get("updated_at")
        self._stale_reason = stale_reason
        return changed

    def data(self) -> Optional[dict]:
        """The `queue_status` data, or None when no poll ever succeeded."""
        if self._snapshot is None:
            return None
        return {**self._snapshot, "updated_at": self._updated_at,
                "stale": self._stale_reason is not None}

