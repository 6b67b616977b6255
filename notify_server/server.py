"""Wiring: one settings object in, the hub, relay, poller and handlers out.

`NotifyServer` owns every long-lived component and is handed to each handler
(no globals). All its methods run on the event-loop thread.
"""

import asyncio
import logging
import time
from typing import List, Optional, Set

import tornado.web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from handlers import routes
from settings import Settings

from . import messages
from .heartbeat import Heartbeat
from .history import History
from .hub import Hub
from .messages import Event
from .metrics import Metrics
from .poller import QueuePoller
from .queue_status import QueueState
from .relay import Relay
from .session import Session

log = logging.getLogger(__name__)

# Events after which the queue lists move: poll again soon.
LIFECYCLE = frozenset((messages.TASK_STARTED, messages.TASK_COMPLETED, messages.TASK_FAILED,
                       messages.TASK_RETRYING, messages.TASK_REVOKED))

EMPTY_QUEUE = {"active_tasks": [], "scheduled_tasks": [], "reserved_tasks": [],
               "workers": [], "updated_at": None, "stale": True}


class NotifyServer:
    def __init__(self, settings: Settings):
        if not settings.redis_url:
            raise ValueError("NotifyServer needs settings.redis_url")
        self.settings = settings
        self.hub = Hub()
        self.queue = QueueState()
        self.metrics = Metrics(open_connections=lambda: len(self.hub))
        self.heartbeat = Heartbeat(settings.ping_interval, settings.ping_timeout)
        self.redis = Redis.from_url(settings.redis_url, socket_timeout=5.0,
                                    socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 1))
        self.history = History(self.redis, settings.history_stream)
        self.relay = Relay(settings.redis_url, settings.events_channel, settings.history_stream,
                           on_events=self._on_events, on_resync=self._on_resync,
                           on_connected=self._on_redis_state,
                           on_invalid=self.metrics.dropped.labels("invalid").inc)
        self.poller = QueuePoller(
            settings.effective_broker_url, self.queue, self._on_queue_change,
            interval=settings.poll_interval, timeout=settings.inspect_timeout,
            discovery_interval=settings.discovery_interval,
            refresh_delay=settings.refresh_delay, subject_arg=settings.subject_arg,
            on_poll=self.metrics.poll)
        self._tasks: List[asyncio.Task] = []
        self._all_closed: Optional[asyncio.Event] = None  # set by `forget` while stopping
        self._resumes: Set[asyncio.Task] = set()  # running replays (a Task needs a reference)
        # The framed queue_status and the data it was built from (rebuilt when
        # a poll moved `updated_at`, so replies always carry the latest poll time).
        self._queue_frame: Optional[bytes] = None
        self._queue_frame_data: Optional[dict] = None

    def application(self) -> tornado.web.Application:
        return tornado.web.Application(
            routes(self),
            websocket_max_message_size=self.settings.max_message_size,
        )

    async def start(self, subscribe_timeout: float = 5.0) -> None:
        """Start the relay and the poller. Returns once the events subscription
        is in place, or after `subscribe_timeout` if Redis is unreachable (the
        relay keeps retrying)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.relay.run()),
                       loop.create_task(self.heartbeat.run()),
                       loop.create_task(self.metrics.watch_loop_lag())]
        self.poller.start()
        try:
            await asyncio.wait_for(self.relay.subscribed_once.wait(), subscribe_timeout)
        except asyncio.TimeoutError:
            log.warning("Redis is unreachable at start-up; serving anyway and retrying")

    async def stop(self, timeout: float) -> None:
        """Close every socket with 1001 and stop the relay and poller.

        Waits up to `timeout` seconds for clients to acknowledge the close;
        Tornado aborts the connections that do not.
        """
        self._all_closed = asyncio.Event()
        if not len(self.hub):
            self._all_closed.set()
        self.hub.close_all(messages.CLOSE_GOING_AWAY, "server shutting down")
        await self.poller.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d client(s) did not close within %.1f s", len(self.hub), timeout)

    def forget(self, session: Session) -> None:
        """A socket closed (or was closed as too slow): stop sending to it."""
        self.hub.discard(session)
        if self._all_closed is not None and not len(self.hub):
            self._all_closed.set()

    # -- what handlers ask for ----------------------------------------------

    @property
    def ready(self) -> bool:
        """Redis subscription up and the broker answered the last inspect poll.

        No worker answering makes `queue_status` stale but not the server
        unready: another server process would not do better."""
        return self.relay.connected and self.poller.broker_reachable is True

    def queue_status_frame(self) -> bytes:
        """The framed `queue_status` for one client: the cached snapshot, or
        empty lists marked stale when no poll has succeeded yet."""
        data = self.queue.data()
        if data is None:
            return messages.frame(messages.queue_status(EMPTY_QUEUE))
        if data != self._queue_frame_data:
            self._queue_frame_data = data
            self._queue_frame = messages.frame(messages.queue_status(data))
        return self._queue_frame

    def start_resume(self, session: Session, last_event_id: str) -> None:
        """Run `resume` in the background for a session that is holding."""
        task = asyncio.get_running_loop().create_task(self.resume(session, last_event_id))
        self._resumes.add(task)
        task.add_done_callback(self._resumes.discard)

    async def resume(self, session: Session, last_event_id: str) -> None:
        """Replay the history after `last_event_id` to `session`, then go live.

        The session must already be holding live events (`Session.hold`).
        Sends `resync` first when the id is no longer (or never was) in the
        history, or when the history cannot be read. Always releases the
        session.
        """
        replayed_up_to = None
        try:
            if not await self.history.contains(last_event_id):
                session.send(messages.frame(messages.resync(
                    f"event {last_event_id} is not in the retained history; reload your state")))
                return
            async for batch in self.history.after(last_event_id):
                session.replay(batch)
                if batch:
                    replayed_up_to = batch[-1].id
        except (RedisError, OSError) as exc:
            session.send(messages.frame(messages.resync(
                f"history unavailable ({type(exc).__name__}); reload your state")))
        finally:
            session.release(replayed_up_to)

    def pong_frame(self) -> bytes:
        return messages.frame(messages.pong(time.time()))

    def slow_client_closed(self, dropped_bytes: int) -> None:
        self.metrics.slow_disconnects.inc()
        self.metrics.slow_dropped_bytes.inc(dropped_bytes)

    # -- callbacks from the relay and poller ----------------------------------

    def _on_events(self, events: List[Event]) -> None:
        self.metrics.broadcast(events, self.hub.publish(events), time.time())
        if any(event.type in LIFECYCLE for event in events):
            self.poller.request_refresh()

    def _on_resync(self, reason: str) -> None:
        sent = self.hub.send_all(messages.frame(messages.resync(reason)))
        self.metrics.sent_of(messages.RESYNC).inc(sent)

    def _on_redis_state(self, connected: bool) -> None:
        log.info("events subscription %s", "up" if connected else "down")
        self.metrics.redis_up.set(1 if connected else 0)

    def _on_queue_change(self, data: dict) -> None:
        self._queue_frame_data = data
        self._queue_frame = messages.frame(messages.queue_status(data))
        self.metrics.sent_of(messages.QUEUE_STATUS).inc(self.hub.send_all(self._queue_frame))
