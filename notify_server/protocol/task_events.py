"""Task events as workers write them: their shapes, their subject, their bytes.

The worker side's half of the protocol (docs/protocol.md section 6), pure:
the standard library and orjson only, so that `worker` and `emitter` run in
a Celery worker that has only celery, redis and orjson installed. `messages` re-exports the builders:
the server and the workers share one definition of each event shape.
"""

import ast
import math
from typing import Any, Optional

import orjson

TASK_STARTED = "task_started"
TASK_COMPLETED = "task_completed"
TASK_FAILED = "task_failed"
TASK_PROGRESS = "task_progress"
TASK_RETRYING = "task_retrying"
TASK_REVOKED = "task_revoked"
TASK_RECEIVED = "task_received"
TASK_REJECTED = "task_rejected"
WORKER_ONLINE = "worker_online"
WORKER_OFFLINE = "worker_offline"

# Types about a worker rather than a task: every client may see them, in
# token mode too (like queue_status's `workers`), and subscriptions do not filter them.
WORKER_EVENTS = frozenset((WORKER_ONLINE, WORKER_OFFLINE))

# How long the first writer of a task's transition keeps the others out
# (`transition_key`): the worker hook and the Celery event bridge write the
# same transitions, and each must reach clients once.
ONCE_WINDOW = 600


def task_started(task_id: str, avid: Any) -> dict:
    return _task_event(TASK_STARTED, task_id, avid, "started")


def task_completed(task_id: str, avid: Any, message: str) -> dict:
    return _task_event(TASK_COMPLETED, task_id, avid, "success", message=message)


def task_failed(task_id: str, avid: Any, message: str) -> dict:
    return _task_event(TASK_FAILED, task_id, avid, "failed", message=message)


def task_retrying(task_id: str, avid: Any, message: str) -> dict:
    return _task_event(TASK_RETRYING, task_id, avid, "retrying", message=message)


def task_revoked(task_id: str, avid: Any, message: str) -> dict:
    return _task_event(TASK_REVOKED, task_id, avid, "revoked", message=message)


def task_received(task_id: str, avid: Any, worker: str) -> dict:
    return _task_event(TASK_RECEIVED, task_id, avid, "received", worker=worker)


def task_rejected(task_id: str, avid: Any, message: str) -> dict:
    return _task_event(TASK_REJECTED, task_id, avid, "rejected", message=message)


def worker_online(worker: str, at: float) -> dict:
    return {"type": WORKER_ONLINE, "data": {"worker": worker, "time": at}}


def worker_offline(worker: str, at: float, reason: str) -> dict:
    return {"type": WORKER_OFFLINE, "data": {"worker": worker, "time": at, "reason": reason}}


def transition_key(task_id: str, kind: str, attempt: Any) -> str:
    """What identifies one transition of one task, whoever writes it: its id,
    the event type and the attempt (Celery's `retries`: a retried task starts
    again under the same id)."""
    return f"{task_id}:{kind}:{attempt if isinstance(attempt, int) else 0}"


def task_progress(task_id: str, avid: Any, current: float, total: float, message: str) -> dict:
    """A progress report; `current` and `total` that are not real numbers are
    sent as their capped text (`encode_event`) with a `percent` of 0.0."""
    numbers = all(isinstance(n, (int, float)) and not isinstance(n, bool)
                  for n in (current, total))
    try:
        percent = round(100.0 * current / total, 1) if numbers and total else 0.0
    except (OverflowError, ValueError):  # inf / inf, 10**400 / 3
        percent = 0.0
    return _task_event(TASK_PROGRESS, task_id, avid, "progress", current=current, total=total,
                       percent=percent, message=message)


def _task_event(kind: str, task_id: str, avid: Any, status: str, **more: Any) -> dict:
    # The seed's clients read data's keys in this order: task_id, avid, status, then the rest.
    return {"type": kind, "data": {"task_id": task_id, "avid": avid, "status": status, **more}}


def safe_text(value: Any, limit: int = 1000) -> str:
    """A short printable string for a reason or result: never raises."""
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # a broken __str__ must not break event emission
        text = repr(type(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def subject_of(args: Any, kwargs: Any, subject_arg: str) -> Any:
    """The task's subject (`avid`): kwargs[subject_arg], else the first positional.

    Accepts the real objects or their reprs (Celery sends reprs when a task
    uses `argsrepr`/`kwargsrepr`, or for older protocol messages). Returns None
    when there is no subject.
    """
    kwargs = _literal(kwargs)
    if isinstance(kwargs, dict) and subject_arg in kwargs:
        return _plain(kwargs[subject_arg])
    args = _literal(args)
    if isinstance(args, (list, tuple)) and args:
        return _plain(args[0])
    return None


def owner_of(kwargs: Any, owner_arg: str) -> Optional[str]:
    """The task's owner: kwargs[owner_arg] as `owner_text` gives it, else None.

    Keyword only (a positional argument names no owner). Like `subject_of`,
    accepts the real kwargs or their repr.
    """
    kwargs = _literal(kwargs)
    if isinstance(kwargs, dict):
        return owner_text(kwargs.get(owner_arg))
    return None


def owner_text(value: Any) -> Optional[str]:
    """An owner as the wire carries it: a string as it is, a whole number as its
    decimal string ("42"); None for anything else, bool included."""
    # str.__str__ and int.__repr__ give plain values and run no subclass's code.
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return int.__repr__(value)
    return None


def with_owner(message: dict, owner: Optional[str]) -> dict:
    """`message` with a top-level "owner" beside "type" and "data" (never inside
    "data"); the message itself when there is no owner."""
    return message if owner is None else {**message, "owner": owner}


def arguments(value: Any) -> Any:
    """Task args or kwargs as objects: a repr is parsed safely (None if it cannot be)."""
    return _literal(value)


def _literal(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    return value


def _plain(value: Any) -> Any:
    """Keep JSON scalars as they are; anything else becomes its string."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def revoked_text(expired: bool, terminated: bool, signum: Any) -> str:
    """The `message` of a `task_revoked`: why the task will not run (on)."""
    if expired:
        return "expired before it ran"
    if terminated:
        return f"terminated by signal {safe_text(signum)}"
    return "revoked"


# Keys that are not strings as JSON's own module writes them ({1: x} as {"1": x});
# dates and dataclasses are no JSON value: they go the way of any other object.
_ORJSON_OPTIONS = (orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME
                   | orjson.OPT_PASSTHROUGH_DATACLASS)


def encode_event(message: Any, replaced: Optional[set] = None) -> bytes:
    """An event as compact UTF-8 JSON, keys in the order the builders give.

    Encoded with orjson, as the server parses it (`stream.parse_event`): a
    twentieth of the standard library's cost, on the worker's own CPU. JSON
    has no NaN or infinity: such a float (say a progress of nan) is written
    as null rather than as a token the server rejects. A value JSON cannot
    encode (an object, a set, bytes, a date, an integer of more than 64 bits)
    is written as its text, capped like `safe_text`, and its type added to
    `replaced` when given; a string UTF-8 cannot hold (a lone surrogate) has
    such characters replaced by "?"; never raises.
    """
    try:
        return orjson.dumps(message, option=_ORJSON_OPTIONS)
    except (TypeError, ValueError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        return orjson.dumps(_encodable(message, set() if replaced is None else replaced),
                            option=_ORJSON_OPTIONS)


def _encodable(value: Any, replaced: set, depth: int = 0) -> Any:
    """`value` with what JSON cannot hold replaced: a non-finite float by
    None, anything else JSON has no form for by its capped text (its type
    added to `replaced`)."""
    if isinstance(value, str):
        return _utf8(value)
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, int) and -2 ** 63 <= value < 2 ** 64:
        return value
    if depth < 32 and isinstance(value, dict):
        return {_utf8(key) if isinstance(key, str) else _text_of(key, replaced, 100):
                _encodable(item, replaced, depth + 1) for key, item in value.items()}
    if depth < 32 and isinstance(value, (list, tuple)):
        return [_encodable(item, replaced, depth + 1) for item in value]
    return _text_of(value, replaced, 200)


def _text_of(value: Any, replaced: set, limit: int) -> str:
    replaced.add(type(value))
    return _utf8(safe_text(value, limit))


def _utf8(text: str) -> str:
    """`text`, with what UTF-8 cannot hold (lone surrogates) as "?"."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
