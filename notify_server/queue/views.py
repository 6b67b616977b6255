"""What one client may see of the queue data: scoping by owner, and the
Celery event bridge's worker table merged in. Pure.
"""

from typing import FrozenSet, List, Optional

from notify_server.protocol.names import TASK_LISTS


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
