"""The `queue_status` frames of one queue snapshot, one per view, and which
scoped clients a change must reach.

Pure. A view is what one scope sees: everything (None), or the owners it
sees that have tasks in the snapshot, so clients whose views are the same
share one frame. A push reaches a scoped client only when its own view
moved: pushes must not tell it when other users' tasks come and go.
"""

from typing import Callable, Dict, FrozenSet, Optional, Tuple

from notify_server.access.auth import Scope
from notify_server.protocol import messages
from notify_server.queue.views import for_scope, owners_of_tasks

View = Optional[FrozenSet[str]]


class QueueViews:
    """Caches each view's frame until the snapshot changes. Not thread-safe:
    the event-loop thread calls it."""

    def __init__(self) -> None:
        self._data: Optional[dict] = None
        self._frames: Dict[View, bytes] = {}
        self._task_owners: FrozenSet[str] = frozenset()
        # What the last push showed each scoped view, but its poll time.
        self._pushed: Dict[FrozenSet[str], dict] = {}

    def frame(self, data: dict, scope: Scope) -> bytes:
        """The framed `queue_status` of `data` as `scope` may see it."""
        if data != self._data:
            self._data, self._frames = data, {}
            self._task_owners = owners_of_tasks(data)
        view = None if scope.sees_everything else scope.owners & self._task_owners
        frame = self._frames.get(view)
        if frame is None:
            frame = messages.frame(messages.queue_status(for_scope(data, view)))
            self._frames[view] = frame
            if view is not None:
                self._content(view)  # what clients with this view have now seen
        return frame

    def push(self, data: dict) -> Tuple[bytes, Callable[[Scope], Optional[bytes]]]:
        """`data` changed: the frame for every unscoped client, and
        `frame_for(scope)`, the frame for a scoped one, or None when its view
        is what the last push showed it (a new poll time alone is no change)."""
        everything = self.frame(data, Scope())
        before, self._pushed = self._pushed, {}

        def frame_for(scope: Scope) -> Optional[bytes]:
            view = scope.owners & self._task_owners
            if before.get(view) == self._content(view):
                return None
            return self.frame(data, scope)
        return everything, frame_for

    def _content(self, view: FrozenSet[str]) -> dict:
        """`view` of the current snapshot without its poll time, kept until
        the next push compares against it."""
        content = self._pushed.get(view)
        if content is None:
            content = for_scope(self._data, view)
            del content["updated_at"]
            self._pushed[view] = content
        return content
