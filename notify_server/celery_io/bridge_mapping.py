"""Celery's own events (`celery worker -E`) turned into protocol events.

Pure: no Celery, kombu or Redis import. The bridge's helper process
(`bridge_helper.py`) feeds each event dict as Celery's `EventReceiver` hands
it over; `CeleryEventMapper` returns what to write, each with the key that
makes it a once-only write (`events.transition_key`), so that the worker
hook and the bridge, or two bridges, never write one transition twice.

Celery's task events carry little: only `task-received` has the arguments
(as reprs) and the attempt (`retries`). The mapper remembers them per task
id, for the most recent `remembered` tasks, and gives every later event of
the task the same `avid` and owner. A task it never saw received (one
received before the bridge started) gets `avid` None and no owner, not a
guess.

Workers: `worker-online`, `worker-heartbeat` and `worker-offline` keep a
table of workers; a worker is offline when it said so, or when no
heartbeat arrived within `HEARTBEAT_EXPIRY` of its heartbeat interval
(Celery's own rule, `celery.events.state.heartbeat_expires`: twice the
interval, counted from when the last heartbeat was received here).
"""

import collections
import dataclasses
import functools
from typing import Any, Dict, List, Optional

from notify_server.protocol import task_events as events

# Celery's expire window (HEARTBEAT_EXPIRE_WINDOW = 200 %) of the heartbeat interval.
HEARTBEAT_EXPIRY = 2.0
DEFAULT_HEARTBEAT_INTERVAL = 2.0
# Offline workers stay in the table (and in `worker_states`) this long.
OFFLINE_RETENTION = 3600.0
MAX_WORKERS = 1000
# Celery cuts its reprs at 1,024 characters; a longer one is not parsed at all.
MAX_REPR = 4096
# The reprs whose parse is remembered (at most about 4 MB of them).
PARSED_REPRS = 1024


@dataclasses.dataclass(frozen=True)
class Outgoing:
    """One protocol message to write, once per `once` key."""

    message: dict
    once: str
    record: Optional[dict] = None  # what the task's record keeps beyond the event


@dataclasses.dataclass
class _Task:
    avid: Any
    owner: Optional[str]
    attempt: int
    name: Optional[str] = None
    # The attempt that last started: Celery sends a retry's task-received
    # (the next attempt) before the task-retried of the attempt that raised.
    started: Optional[int] = None


@dataclasses.dataclass
class WorkerState:
    name: str
    online: bool
    last_heartbeat: Optional[float]   # the worker's own timestamp of its last heartbeat
    heard_at: float                   # when that arrived here (this process's clock)
    interval: float                   # the worker's heartbeat interval
    since: float                      # when it went online or offline (worker's clock)

    def as_dict(self) -> dict:
        return {"name": self.name, "online": self.online, "last_heartbeat": self.last_heartbeat}


class CeleryEventMapper:
    """Maps Celery events to protocol messages; keeps per-task and per-worker memory."""

    def __init__(self, subject_arg: str, owner_arg: str, remembered: int = 10000):
        self._subject_arg, self._owner_arg = subject_arg, owner_arg
        self._remembered = remembered
        self._tasks: "collections.OrderedDict[str, _Task]" = collections.OrderedDict()
        self.workers: Dict[str, WorkerState] = {}

    # -- tasks -----------------------------------------------------------------

    def task_event(self, event: dict) -> List[Outgoing]:
        """The protocol message(s) for one `task-*` event (none for a type
        with no protocol counterpart or an event without a task id)."""
        task_id = event.get("uuid")
        if not isinstance(task_id, str) or not task_id:
            return []
        kind = event.get("type")
        if kind == "task-received":
            task = self._received(task_id, event)
            worker = events.safe_text(event.get("hostname") or "", 200)
            return self._out(events.task_received(task_id, task.avid, worker), task, task_id,
                             event)
        task = self._tasks.get(task_id) or _Task(None, None, 0)
        if kind == "task-started":
            task.started = task.attempt
            message = events.task_started(task_id, task.avid)
        elif kind == "task-succeeded":
            result = event.get("result")
            text = "success" if result in (None, "None") else events.safe_text(result)
            message = events.task_completed(task_id, task.avid, text)
        elif kind == "task-failed":
            message = events.task_failed(task_id, task.avid,
                                         events.safe_text(event.get("exception") or "failed"))
        elif kind == "task-retried":
            message = events.task_retrying(task_id, task.avid,
                                           events.safe_text(event.get("exception") or "retrying"))
            if task.started is not None:
                return self._out(message, dataclasses.replace(task, attempt=task.started),
                                 task_id, event)
        elif kind == "task-revoked":
            text = events.revoked_text(event.get("expired"), event.get("terminated"),
                                       event.get("signum"))
            message = events.task_revoked(task_id, task.avid, text)
        elif kind == "task-rejected":
            text = "requeued" if event.get("requeue") else "rejected"
            message = events.task_rejected(task_id, task.avid, text)
        elif kind == "task-progress":
            return self._progress(task_id, task, event)
        else:
            return []
        return self._out(message, task, task_id, event)

    def _received(self, task_id: str, event: dict) -> _Task:
        args, kwargs = _arguments(event.get("args")), _arguments(event.get("kwargs"))
        retries = event.get("retries")
        name = event.get("name")
        task = _Task(avid=events.subject_of(args, kwargs, self._subject_arg),
                     owner=events.owner_of(kwargs, self._owner_arg),
                     attempt=retries if isinstance(retries, int) and retries >= 0 else 0,
                     name=events.safe_text(name, 200) if isinstance(name, str) else None)
        before = self._tasks.get(task_id)
        task.started = None if before is None else before.started
        self._tasks[task_id] = task
        self._tasks.move_to_end(task_id)
        while len(self._tasks) > self._remembered:
            self._tasks.popitem(last=False)
        return task

    def _progress(self, task_id: str, task: _Task, event: dict) -> List[Outgoing]:
        current, total = _number(event.get("current")), _number(event.get("total"))
        if current is None or total is None:
            return []
        message = events.task_progress(task_id, task.avid, current, total,
                                       events.safe_text(event.get("message") or ""))
        # Every progress report is its own transition: keyed by the worker's clock.
        once = events.transition_key(task_id, events.TASK_PROGRESS, task.attempt) + \
            f":{event.get('clock', event.get('timestamp'))}"
        return [Outgoing(events.with_owner(message, task.owner), once, _record(task, event))]

    @staticmethod
    def _out(message: dict, task: _Task, task_id: str, event: dict) -> List[Outgoing]:
        once = events.transition_key(task_id, message["type"], task.attempt)
        return [Outgoing(events.with_owner(message, task.owner), once, _record(task, event))]

    # -- workers ---------------------------------------------------------------

    def worker_event(self, event: dict, now: float) -> List[Outgoing]:
        """The `worker_online`/`worker_offline` a `worker-*` event causes (at
        most one), updating the table; `now` is this process's clock."""
        name = event.get("hostname")
        if not isinstance(name, str) or not name:
            return []
        name = events.safe_text(name, 200)
        kind = event.get("type")
        stamp = _number(event.get("timestamp"))
        at = now if stamp is None else stamp
        interval = _number(event.get("freq")) or DEFAULT_HEARTBEAT_INTERVAL
        worker = self.workers.get(name)
        if kind in ("worker-online", "worker-heartbeat"):
            came_online = worker is None or not worker.online
            if came_online:
                worker = self._new_worker(name, at, now, interval)
            worker.last_heartbeat, worker.heard_at, worker.interval = at, now, interval
            return [self._online(worker)] if came_online else []
        if kind == "worker-offline":
            if worker is not None and not worker.online:
                return []
            if worker is None:
                worker = self._new_worker(name, at, now, interval)
            return [self._offline(worker, at, "shutdown")]
        return []

    def expire(self, now: float) -> List[Outgoing]:
        """`worker_offline` for every online worker whose heartbeats stopped;
        forgets workers offline for longer than `OFFLINE_RETENTION`."""
        gone = []
        for worker in list(self.workers.values()):
            if worker.online and now > worker.heard_at + HEARTBEAT_EXPIRY * worker.interval:
                at = (worker.last_heartbeat or worker.since) + (now - worker.heard_at)
                gone.append(self._offline(worker, at, "heartbeats stopped"))
            elif not worker.online and now - worker.heard_at > OFFLINE_RETENTION:
                del self.workers[worker.name]
        return gone

    def reconnected(self, now: float) -> None:
        """The bridge (re)connected to the broker at `now`: workers silent
        during the outage get a fresh expiry window (Celery's receiver asks
        them for a heartbeat on connecting)."""
        for worker in self.workers.values():
            worker.heard_at = max(worker.heard_at, now)

    def worker_states(self) -> List[dict]:
        """Every worker in the table, by name: online or not, last heartbeat."""
        return [self.workers[name].as_dict() for name in sorted(self.workers)]

    def _new_worker(self, name: str, at: float, now: float, interval: float) -> WorkerState:
        worker = WorkerState(name, True, at, now, interval, at)
        self.workers[name] = worker
        if len(self.workers) > MAX_WORKERS:
            oldest = min(self.workers.values(), key=lambda w: (w.online, w.heard_at))
            del self.workers[oldest.name]
        return worker

    @staticmethod
    def _online(worker: WorkerState) -> Outgoing:
        worker.online, worker.since = True, worker.last_heartbeat or worker.since
        return Outgoing(events.worker_online(worker.name, worker.since),
                        f"worker:{worker.name}:{events.WORKER_ONLINE}:{worker.since!r}")

    @staticmethod
    def _offline(worker: WorkerState, at: float, reason: str) -> Outgoing:
        # Keyed by when it came online: one offline per online period, however detected.
        once = f"worker:{worker.name}:{events.WORKER_OFFLINE}:{worker.since!r}"
        worker.online, worker.since = False, at
        return Outgoing(events.worker_offline(worker.name, at, reason), once)


def _record(task: _Task, event: dict) -> dict:
    """What the task's record keeps beyond the event: its name, the worker,
    the attempt, the worker's time of the event and, when done, the runtime."""
    hostname = event.get("hostname")
    return {"attempt": task.attempt, "name": task.name,
            "worker": events.safe_text(hostname, 200) if isinstance(hostname, str) else None,
            "time": _number(event.get("timestamp")), "runtime": _number(event.get("runtime"))}


def _arguments(value: Any) -> Any:
    """Task args or kwargs as objects, parsed from their repr once; None for
    a repr too long to parse, or one that is not a list, tuple or dict (a
    str left over would be parsed again by `subject_of`)."""
    if not isinstance(value, str):
        return value
    if len(value) > MAX_REPR:
        return None
    parsed = _parsed_repr(value)
    return parsed if isinstance(parsed, (list, tuple, dict)) else None


# Many tasks share their arguments' reprs (the same kwargs, say): parsing
# one with `ast.literal_eval` costs far more than finding it here. Read
# only: nothing the mapper does changes a parsed value.
_parsed_repr = functools.lru_cache(maxsize=PARSED_REPRS)(events.arguments)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value
