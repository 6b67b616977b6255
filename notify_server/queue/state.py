"""The last queue snapshot and whether it is current. Pure."""

from typing import List, Optional

from notify_server.protocol.names import TASK_LISTS


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
