"""Celery inspect replies turned into the seed's `queue_status` data.

Pure: no Celery, Tornado or Redis imports. The inspect helper feeds the
replies of `active`, `scheduled`, `reserved` and `active_queues` in.
"""

from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, Optional

from notify_server.protocol.names import DEFAULT_OWNER_ARG, DEFAULT_SUBJECT_ARG
from notify_server.protocol.task_events import owner_of, subject_of

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
              subject_arg: str = DEFAULT_SUBJECT_ARG,
              owner_arg: str = DEFAULT_OWNER_ARG) -> dict:
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
