"""Client resumes: the history after a client's last event id, replayed to
its session before it goes live (docs/protocol.md, "Resume").

An adapter around `History` (redis.asyncio). Runs on the event loop.
"""

import asyncio
import logging
from typing import Callable, Set

from redis.exceptions import RedisError

from notify_server.delivery.session import Session
from notify_server.redis_io.history import History

log = logging.getLogger(__name__)

# Replays read from the history at once; the others wait their turn (live
# events are held meanwhile). redis-py's pool has 100 connections: a burst of
# reconnects past that failed with MaxConnectionsError, and those clients got
# `resync` although every event was still there. With REPLAY_BATCH this bounds
# the parsed history held at once by all replays to 800 entries: 32 replays of
# 500 (up to about 11 MB) raised the peak that the process's RSS keeps
# (bench/RESULTS-soak.md).
MAX_CONCURRENT_REPLAYS = 8
REPLAY_BATCH = 100


class Resumer:
    """Replays the history to sessions, at most MAX_CONCURRENT_REPLAYS at once.

    `send_queue_status(session)` and `send_resync(session, reason)` write
    those replies (and count them).
    """

    def __init__(self, history: History, send_queue_status: Callable[[Session], None],
                 send_resync: Callable[[Session, str], None]):
        self._history = history
        self._send_queue_status, self._send_resync = send_queue_status, send_resync
        self._replays = asyncio.Semaphore(MAX_CONCURRENT_REPLAYS)
        self._running: Set[asyncio.Task] = set()  # a Task needs a reference

    def start(self, session: Session, last_event_id: str) -> None:
        """Replay in the background to `session`, which already holds its live
        events (`Session.hold`); see `resume`."""
        task = asyncio.get_running_loop().create_task(self.resume(session, last_event_id))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def resume(self, session: Session, last_event_id: str) -> None:
        """Replay the history after `last_event_id` to `session`, then go live.

        The session must already be holding live events (`Session.hold`).
        Sends `resync` first when the id is no longer (or never was) in the
        history, or when the history cannot be read. Always ends with the
        current `queue_status` and releases the session.
        """
        replayed_up_to = None
        try:
            async with self._replays:
                if not await self._history.contains(last_event_id):
                    self._send_resync(session, f"event {last_event_id} is not in the retained "
                                               "history; reload your state")
                    return
                async for batch in self._history.after(last_event_id, REPLAY_BATCH):
                    session.replay(batch)
                    if batch:
                        replayed_up_to = batch[-1].id
        except (RedisError, OSError) as exc:
            log.warning("a resume after %s got resync: the history could not be read (%s)",
                        last_event_id, exc)
            self._send_resync(session, f"history unavailable ({type(exc).__name__}); "
                                       "reload your state")
        finally:
            try:
                self._send_queue_status(session)
            finally:
                session.release(replayed_up_to)
