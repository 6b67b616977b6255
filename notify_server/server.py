"""Wiring: one settings object in, the hub, relay, poller and handlers out.

`NotifyServer` owns every long-lived component and is handed to each handler
(no globals). All its methods run on the event-loop thread.
"""

import asyncio
import logging
import time
from typing import Optional

import tornado.web
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from handlers import routes
from settings import Settings

from . import messages
from .history import History
from .hub import Hub
from .messages import Event
from .poller import QueuePoller, make_inspect_app
from .queue_status import QueueState
from .relay import Relay
from .session import Session

log = logging.getLogger(__name__)

# Events after which the queue lists move: poll again soon.
LIFECYCLE = frozenset((messages.TASK_STARTED, messages.TASK_COMPLETED, messages.TASK_FAILED,
                       messages.TASK_RETRYING, messages.TASK_REVOKED))


class NotifyServer:
    def __init__(self, settings: Settings):
        if not settings.redis_url:
            raise ValueError("NotifyServer needs settings.redis_url")
        self.settings = settings
        self.hub = Hub()
        self.queue = QueueState()
        self.redis = Redis.from_url(settings.redis_url, socket_timeout=5.0,
                                    socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 1))
        self.history = History(self.redis, settings.history_stream)
        self.relay = Relay(settings.redis_url, settings.events_channel, settings.history_stream,
                           on_event=self._on_event, on_resync=self._on_resync,
                           on_connected=self._on_redis_state)
        self.poller = QueuePoller(
            make_inspect_app(settings.effective_broker_url), self.queue, self._on_queue_change,
            interval=settings.poll_interval, timeout=settings.inspect_timeout,
            discovery_interval=settings.discovery_interval,
            refresh_delay=settings.refresh_delay, subject_arg=settings.subject_arg)
        self._relay_task: Optional[asyncio.Task] = None
        self._queue_frame: Optional[bytes] = None

    def application(self) -> tornado.web.Application:
        return tornado.web.Application(
            routes(self),
            websocket_max_message_size=self.settings.max_message_size,
        )

    async def start(self, subscribe_timeout: float = 5.0) -> None:
        """Start the relay and the poller. Returns once the events subscription
        is in place, or after `subscribe_timeout` if Redis is unreachable (the
        relay keeps retrying)."""
        self._relay_task = asyncio.get_running_loop().create_task(self.relay.run())
        self.poller.start()
        try:
            await asyncio.wait_for(self.relay.subscribed_once.wait(), subscribe_timeout)
        except asyncio.TimeoutError:
            log.warning("Redis is unreachable at start-up; serving anyway and retrying")

    async def stop(self) -> None:
        await self.poller.stop()
        if self._relay_task is not None:
            self._relay_task.cancel()
            try:
                await self._relay_task
            except asyncio.CancelledError:
                pass
        await self.redis.aclose()

    # -- what handlers ask for ----------------------------------------------

    def queue_status_frame(self) -> bytes:
        """The encoded `queue_status` for one client: the cached snapshot, or
        empty lists marked stale when no poll has succeeded yet."""
        if self._queue_frame is None:
            data = self.queue.data() or {
                "active_tasks": [], "scheduled_tasks": [], "reserved_tasks": [],
                "workers": [], "updated_at": None, "stale": True}
            return messages.encode(messages.queue_status(data))
        return self._queue_frame

    async def resume(self, session: Session, last_event_id: str) -> None:
        """Replay the history after `last_event_id` to `session`, then go live.

        The session must already be holding live events (`Session.hold`).
        Sends `resync` first when the id is no longer (or never was) in the
        history. Always releases the session, also when Redis fails.
        """
        replayed_up_to = None
        try:
            if not await self.history.contains(last_event_id):
                session.send(messages.encode(messages.resync(
                    f"event {last_event_id} is not in the retained history; reload your state")))
                return
            async for batch in self.history.after(last_event_id):
                for event in batch:
                    session.replay(event)
                if batch:
                    replayed_up_to = batch[-1].id
        except RedisError as exc:
            session.send(messages.encode(messages.resync(
                f"history unavailable ({type(exc).__name__}); reload your state")))
        finally:
            session.release(replayed_up_to)

    def pong_frame(self) -> bytes:
        return messages.encode(messages.pong(time.time()))

    # -- callbacks from the relay and poller ----------------------------------

    def _on_event(self, event: Event) -> None:
        self.hub.publish(event)
        if event.type in LIFECYCLE:
            self.poller.request_refresh()

    def _on_resync(self, reason: str) -> None:
        self.hub.send_all(messages.encode(messages.resync(reason)))

    def _on_redis_state(self, connected: bool) -> None:
        log.info("events subscription %s", "up" if connected else "down")

    def _on_queue_change(self, data: dict) -> None:
        self._queue_frame = messages.encode(messages.queue_status(data))
        self.hub.send_all(self._queue_frame)
