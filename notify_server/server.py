"""Wiring: one `ServerConfig` in; the hub, relay, poller, lease and heartbeat held together.

`NotifyServer` owns every long-lived component. Of all processes sharing a
Redis, the one holding the lease (`lease.Lease`) polls Celery inspect and
writes each result to Redis (a key with the latest, and a notification, in
one step); every process, that one included, serves `queue_status` and REST
from what the relay receives, so all of them show the same snapshot. The web layer (`handlers/`)
is handed the one instance and asks it for what it shows; this package
never imports the web layer or the settings module. All methods run on the
event-loop thread.
"""

import asyncio
import dataclasses
import logging
import time
from typing import Callable, Dict, FrozenSet, List, Optional, Set, Tuple

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from tornado.iostream import IOStream

from notify_server.protocol import messages
from notify_server.access.auth import EVERYONE, AuthError, Authenticator, Scope
from notify_server.celery_io.bridge import CeleryEventBridge
from notify_server.edge.connection import OPEN, Connection
from notify_server.edge.heartbeat import Heartbeat
from notify_server.redis_io.history import History
from notify_server.delivery.hub import Hub
from notify_server.redis_io.lease import Lease
from notify_server.access.limits import ActionBucket, ConnectionCounter
from notify_server.protocol.messages import Event, ProtocolError
from notify_server.metrics import Metrics
from notify_server.celery_io.poller import QueuePoller
from notify_server.queue.status import QueueState, for_scope, owners_of_tasks, with_workers, workers_moved
from notify_server.config import ServerConfig
from notify_server.redis_io.clients import RedisLocation
from notify_server.redis_io.relay import Relay
from notify_server.delivery.session import Session

log = logging.getLogger(__name__)

# Events after which the queue lists move: poll again soon.
LIFECYCLE = frozenset((messages.TASK_STARTED, messages.TASK_COMPLETED, messages.TASK_FAILED,
                       messages.TASK_RETRYING, messages.TASK_REVOKED, messages.TASK_RECEIVED,
                       messages.TASK_REJECTED, messages.WORKER_ONLINE, messages.WORKER_OFFLINE))

EMPTY_QUEUE = {"active_tasks": [], "scheduled_tasks": [], "reserved_tasks": [],
               "workers": [], "queues": [], "updated_at": None, "stale": True}


# The leader's poll result: stored and announced in one step, and only while
# the lease (KEYS[3]) is still ours (ARGV[2]): a deposed leader's late write is dropped.
SNAPSHOT_SCRIPT = """
if redis.call('GET', KEYS[3]) ~= ARGV[2] then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[1])
return 1
"""

# Replays read from the history at once; the others wait their turn (live
# events are held meanwhile). redis-py's pool has 100 connections: a burst of
# reconnects past that failed with MaxConnectionsError, and those clients got
# `resync` although every event was still there.
MAX_CONCURRENT_REPLAYS = 32

# Without a snapshot from the leader for this many poll intervals, the lists are stale.
SNAPSHOT_PATIENCE = 3


class NotifyServer:
    def __init__(self, config: ServerConfig):
        self.config = config
        self.queue = QueueState()
        # Every socket not yet CLOSED (open or closing): what shutdown waits for.
        self._connections: Set[Connection] = set()
        self._counter = ConnectionCounter(config.access.max_connections, config.access.max_connections_per_ip)
        self._authenticator = (Authenticator(config.access.auth_secrets, config.access.auth_leeway)
                               if config.access.auth_secrets else None)
        # When each token-mode socket's token runs out (cancelled when it closes).
        self._expiry: Dict[Connection, asyncio.TimerHandle] = {}
        self.metrics = Metrics(open_connections=lambda: len(self._connections))
        self.hub = Hub(on_sent=lambda kind, count: self.metrics.sent_of(kind).inc(count))
        self.heartbeat = Heartbeat(config.sockets.ping_interval, config.sockets.ping_timeout)
        self.location = RedisLocation(config.redis.url, config.redis.sentinels,
                                      config.redis.master)
        self.redis = self.location.client(socket_timeout=5.0, socket_connect_timeout=2.0,
                                          retry=Retry(NoBackoff(), 1))
        self.history = History(self.redis, config.redis.keys.history_stream)
        self.relay = Relay(self.location.client, config.redis.keys.events_channel, config.redis.keys.history_stream,
                           on_events=self._on_events, on_resync=self._on_resync,
                           on_connected=self._on_redis_state,
                           on_invalid=self.metrics.dropped.labels("invalid").inc,
                           snapshot_channel=config.redis.keys.queue_channel, snapshot_key=config.redis.keys.queue_key,
                           on_snapshot=self._on_shared_snapshot)
        # The poller keeps its own state: what it found, before the round trip through Redis.
        self.poller = QueuePoller(config.celery, config.broker_master, QueueState(),
                                  self._on_poll_result, on_poll=self.metrics.poll)
        # The lease gets its own client: a renewal must fail fast, well within the lease.
        self._lease_redis = self.location.client(
            socket_timeout=config.leader_ttl / 3,
            socket_connect_timeout=config.leader_ttl / 3, retry=Retry(NoBackoff(), 0))
        self.lease = Lease(self._lease_redis, config.redis.keys.leader_key, config.instance,
                           config.leader_ttl, on_change=self._on_leadership)
        self._publish_snapshot = self._lease_redis.register_script(SNAPSHOT_SCRIPT)
        # The bridge's worker table (None while it is off or has not reported).
        self._worker_table: Optional[List[dict]] = None
        self.bridge = (CeleryEventBridge(config, self._on_worker_table)
                       if config.celery.events else None)
        self._latest_result: Optional[bytes] = None   # waiting to be written
        self._writer: Optional[asyncio.Task] = None
        self._snapshot_seen = time.monotonic()        # when the relay last brought one
        self._shared_broker = False                   # the leader reached the broker
        self._last_holder: Optional[str] = None
        self._snapshot_patience = SNAPSHOT_PATIENCE * config.celery.poll_interval + config.leader_ttl
        self._tasks: List[asyncio.Task] = []
        self._all_closed: Optional[asyncio.Event] = None  # set by `_closed` while stopping
        self._resumes: Set[asyncio.Task] = set()  # running replays (a Task needs a reference)
        self._replays = asyncio.Semaphore(MAX_CONCURRENT_REPLAYS)
        # The framed queue_status of each scope's view (None: the whole
        # queue; else the owners it sees that have tasks) and the data they
        # were built from: rebuilt when a poll moved `updated_at`, so replies
        # always carry the latest poll time.
        self._queue_frames: Dict[Optional[FrozenSet[str]], bytes] = {}
        self._queue_frame_data: Optional[dict] = None
        self._task_owners: FrozenSet[str] = frozenset()
        # What the last push showed each scoped view, but its poll time.
        self._pushed_views: Dict[FrozenSet[str], dict] = {}

    async def start(self, subscribe_timeout: float = 5.0) -> None:
        """Start the relay, the poller and the bridge. Returns once the events
        subscription is in place and the bridge receives Celery's events, or
        after `subscribe_timeout` for each if Redis or the broker is
        unreachable (both keep retrying)."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self.relay.run()),
                       loop.create_task(self.heartbeat.run()),
                       loop.create_task(self.metrics.watch_loop_lag()),
                       loop.create_task(self.lease.run()),
                       loop.create_task(self._watch_snapshot())]
        self.poller.start()
        if self.bridge is not None:
            self.bridge.start()
        try:
            await asyncio.wait_for(self.relay.subscribed_once.wait(), subscribe_timeout)
        except asyncio.TimeoutError:
            log.warning("Redis is unreachable at start-up; serving anyway and retrying")
        if self.bridge is not None:
            try:
                await asyncio.wait_for(self.bridge.ready.wait(), subscribe_timeout)
            except asyncio.TimeoutError:
                log.warning("the Celery event bridge receives no events yet (is the broker "
                            "up?); serving anyway and retrying")

    async def stop(self, timeout: float) -> None:
        """Close every socket with 1001 and stop the relay and poller.

        Waits up to `timeout` seconds for clients to acknowledge the close;
        Tornado aborts the connections that do not.
        """
        self._all_closed = asyncio.Event()
        if not self._connections:
            self._all_closed.set()
        for connection in tuple(self._connections):
            connection.close(messages.CLOSE_GOING_AWAY, "server shutting down")
        await self.poller.stop()
        if self.bridge is not None:
            await self.bridge.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.lease.release()
        await self._lease_redis.aclose()
        await self.redis.aclose()
        try:
            await asyncio.wait_for(self._all_closed.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("%d client(s) did not close within %.1f s", len(self._connections),
                        timeout)

    # -- one client socket ----------------------------------------------------

    # -- who may connect --------------------------------------------------------

    @property
    def token_mode(self) -> bool:
        """True when clients need a token (a secret is configured)."""
        return self._authenticator is not None

    def authenticate(self, token: Optional[str]) -> Scope:
        """The scope of a client presenting `token` (None when it sent none):
        `EVERYONE` in open mode, whatever it sent. Raises `AuthError`."""
        if self._authenticator is None:
            return EVERYONE
        try:
            return self._authenticator.verify(token)
        except AuthError:
            self.metrics.refused.labels("token").inc()
            raise

    def refusal(self, address: str) -> Optional[Tuple[int, str]]:
        """(HTTP status, message) when one more socket from `address` would
        be over a connection limit (503 in all, 429 for the address), else None."""
        refusal = self._counter.refusal(address)
        if refusal is not None:
            self.metrics.refused.labels("limit").inc()
        return refusal

    def hold_slot(self, address: str) -> Callable[[], None]:
        """Count a socket that is not `connect`ed (refused, closing) against the
        connection limits; returns the function that stops counting it."""
        self._counter.add(address)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._counter.remove(address)
        return release

    def count_refused(self, reason: str) -> None:
        """Count one refusal a handler decided (`rate`, `flood`)."""
        self.metrics.refused.labels(reason).inc()

    def action_bucket(self) -> ActionBucket:
        """A fresh rate limit for one socket's actions."""
        return ActionBucket(self.config.access.action_rate, self.config.access.action_burst, time.monotonic())

    def refresh(self, connection: Connection, session: Session, token: str) -> bytes:
        """Take a newer token for an open socket: the same `sub`, a later
        expiry, its owners from now on. Returns the `refreshed` reply frame;
        raises `ProtocolError` (`auth_disabled` in open mode, `invalid_token`
        for a token that does not verify or is another subject's)."""
        if self._authenticator is None:
            raise ProtocolError(messages.AUTH_DISABLED, "this server has no tokens to refresh")
        try:
            scope = self._authenticator.verify(token)
        except AuthError as exc:
            raise ProtocolError(messages.INVALID_TOKEN, str(exc)) from None
        if scope.sub != session.scope.sub:
            raise ProtocolError(messages.INVALID_TOKEN,
                                "the new token is for another subject; reconnect with it")
        self.hub.rescope(session, scope)
        self._schedule_expiry(connection, scope)
        return messages.frame(messages.refreshed(scope.expires_at))

    def _schedule_expiry(self, connection: Connection, scope: Scope) -> None:
        handle = self._expiry.pop(connection, None)
        if handle is not None:
            handle.cancel()
        if scope.expires_at is None or connection.state is not OPEN:
            return
        delay = max(0.0, scope.expires_at + self._authenticator.leeway - time.time())
        self._expiry[connection] = asyncio.get_running_loop().call_later(
            delay, connection.close, messages.CLOSE_UNAUTHORIZED, "token expired")

    # -- one client socket ----------------------------------------------------

    def connect(self, stream: IOStream, close_socket, peer: str,
                scope: Scope = EVERYONE) -> Tuple[Connection, Session]:
        """A WebSocket just opened on `stream` for a client seeing `scope`:
        its `Connection` (state and writes; `close_socket(code, reason)` is
        Tornado's close) and its `Session`. The socket is pinged from now on,
        closed with 4001 when its token expires, and receives nothing until
        `join` or `start_resume`. While the server is stopping, the
        connection is closed with 1001 at once."""
        session: Optional[Session] = None

        def leave() -> None:
            self.hub.discard(session)
            self.heartbeat.discard(connection)

        connection = Connection(stream, limit=self.config.sockets.max_client_buffer, peer=peer,
                                close_socket=close_socket, on_leave=leave,
                                on_closed=lambda: self._closed(connection),
                                on_slow=self._slow_client_closed)
        session = Session(connection.write, connection.close, self.metrics.delivered, scope)
        self._connections.add(connection)
        self._counter.add(peer)
        self.heartbeat.add(connection)
        self._schedule_expiry(connection, scope)
        if self._all_closed is not None:
            connection.close(messages.CLOSE_GOING_AWAY, "server shutting down")
        return connection, session

    def join(self, connection: Connection, session: Session) -> None:
        """Send the current `queue_status`, then every live event from now on.
        Does nothing once the connection has left OPEN (it would never leave
        the hub again)."""
        if connection.state is not OPEN:
            return
        self.hub.add(session)  # a failed send below takes it out again
        self._send_queue_status(session)

    def start_resume(self, connection: Connection, session: Session, last_event_id: str) -> None:
        """Replay the history after `last_event_id`, then a `queue_status`,
        then go live; runs in the background. Live events wait meanwhile.
        Raises `ProtocolError` (`resume_in_progress`) while a replay runs;
        does nothing once the connection has left OPEN."""
        if connection.state is not OPEN:
            return
        session.hold()
        self.hub.add(session)
        task = asyncio.get_running_loop().create_task(self.resume(session, last_event_id))
        self._resumes.add(task)
        task.add_done_callback(self._resumes.discard)

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
                if not await self.history.contains(last_event_id):
                    self._send_resync(session, f"event {last_event_id} is not in the retained "
                                               "history; reload your state")
                    return
                async for batch in self.history.after(last_event_id):
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

    def _closed(self, connection: Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._counter.remove(connection.peer)
        handle = self._expiry.pop(connection, None)
        if handle is not None:
            handle.cancel()
        if self._all_closed is not None and not self._connections:
            self._all_closed.set()

    def _slow_client_closed(self, dropped_bytes: int) -> None:
        self.metrics.slow_disconnects.inc()
        self.metrics.slow_dropped_bytes.inc(dropped_bytes)

    # -- what handlers ask for ----------------------------------------------

    def health(self) -> dict:
        """Readiness and its parts: ``{"ready", "redis", "broker",
        "queue_stale_reason", "clients"}``. Ready means the Redis subscription
        is up and the broker answered the last inspect poll; no worker
        answering makes `queue_status` stale but not the server unready
        (another server process would not do better)."""
        redis_up = self.relay.connected
        broker_up = self._shared_broker
        return {"ready": redis_up and broker_up, "redis": redis_up, "broker": broker_up,
                "queue_stale_reason": self.queue.stale_reason,
                "clients": len(self._connections), "leader": self.lease.holder,
                "instance": self.config.instance}

    def queue_snapshot(self, scope: Scope = EVERYONE) -> Tuple[Optional[dict], Optional[str]]:
        """The latest queue data `scope` may see (None before any poll
        succeeded) and why it is stale (None when fresh)."""
        data = self._queue_data()
        return (None if data is None else for_scope(data, scope.owners)), self.queue.stale_reason

    def queue_status_frame(self, scope: Scope = EVERYONE) -> bytes:
        """The framed `queue_status` for one client seeing `scope`: the
        cached snapshot, or empty lists marked stale when no poll has
        succeeded yet. Clients whose view is the same share one frame."""
        data = self._queue_data()
        if data is None:
            data = with_workers(EMPTY_QUEUE, self._worker_table)
        if data != self._queue_frame_data:
            self._queue_frame_data = data
            self._queue_frames = {}
            self._task_owners = owners_of_tasks(data)
        view = None if scope.owners is None else scope.owners & self._task_owners
        frame = self._queue_frames.get(view)
        if frame is None:
            frame = messages.frame(messages.queue_status(for_scope(data, view)))
            self._queue_frames[view] = frame
            if view is not None:
                self._view_content(view)  # what clients with this view have now seen
        return frame

    def _queue_data(self) -> Optional[dict]:
        """The shared snapshot, its workers as the bridge last saw them."""
        data = self.queue.data()
        return None if data is None else with_workers(data, self._worker_table)

    def _view_content(self, view: FrozenSet[str]) -> dict:
        """A scoped view of the current snapshot without its poll time, kept
        until the next push compares against it."""
        content = self._pushed_views.get(view)
        if content is None:
            content = for_scope(self._queue_frame_data, view)
            del content["updated_at"]
            self._pushed_views[view] = content
        return content

    def pong_frame(self) -> bytes:
        return messages.frame(messages.pong(time.time()))

    def count_sent(self, kind: str) -> None:
        """Count one message of type `kind` a handler sent itself (a reply)."""
        self.metrics.sent_of(kind).inc()

    def metrics_text(self) -> bytes:
        """This process's metrics in the Prometheus text format."""
        return self.metrics.exposition()

    def _send_queue_status(self, session: Session) -> None:
        session.send(self.queue_status_frame(session.scope))
        self.count_sent(messages.QUEUE_STATUS)

    def _send_resync(self, session: Session, reason: str) -> None:
        session.send(messages.frame(messages.resync(reason)))
        self.count_sent(messages.RESYNC)

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

    # -- the one poller and the shared snapshot ----------------------------------

    def _on_leadership(self, leading: bool, holder: Optional[str]) -> None:
        self.metrics.leader.set(1 if leading else 0)
        if holder is not None and holder != self._last_holder:
            if self._last_holder is not None:
                self.metrics.leader_changes.inc()
            self._last_holder = holder
        if leading:
            data = self.queue.data()
            self.poller.enable(data["workers"] if data and not data["stale"] else (),
                               queues=[queue["name"] for queue in (data or {}).get("queues", ())])
        else:
            self.poller.disable()
        if self.bridge is not None:
            self.bridge.lead(leading)

    def _on_poll_result(self, data: Optional[dict], stale_reason: Optional[str],
                        broker_up: bool) -> None:
        """The leader's poll ended: write the result to Redis for every process."""
        self._latest_result = messages.encode({
            "data": data, "stale_reason": stale_reason, "broker": broker_up,
            "leader": self.config.instance})
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_results())

    async def _write_results(self) -> None:
        # One write at a time, the latest result only: writes never overtake each other.
        while self._latest_result is not None:
            payload, self._latest_result = self._latest_result, None
            try:
                await self._publish_snapshot(
                    keys=[self.config.redis.keys.queue_key, self.config.redis.keys.queue_channel,
                          self.config.redis.keys.leader_key],
                    args=[payload, self.config.instance])
            except (RedisError, OSError) as exc:
                log.warning("could not share the queue snapshot (%s)", exc)

    def _on_shared_snapshot(self, payload: bytes, live: bool) -> None:
        """A snapshot from the leader (maybe this process) arrived through Redis:
        `live` from the channel, else read from the key (maybe old: it does not
        count as a sign of a living leader)."""
        try:
            shared = messages.decode_snapshot(payload)
        except ValueError as exc:
            log.warning("ignoring a malformed queue snapshot: %s", exc)
            return
        stale_reason = shared["stale_reason"]
        if live:
            self._snapshot_seen = time.monotonic()
            self._shared_broker = shared["broker"]
        elif shared["data"] is not None and stale_reason is None:
            age = time.time() - (shared["data"].get("updated_at") or 0.0)
            if age > self._snapshot_patience:
                stale_reason = f"the last queue snapshot is {age:.0f} s old; no poller leader"
        if self.queue.adopt(shared["data"], stale_reason):
            self._on_queue_change()

    async def _watch_snapshot(self) -> None:
        """Mark the lists stale when no leader has shared a snapshot for a while."""
        patience = self._snapshot_patience
        while True:
            await asyncio.sleep(self.config.celery.poll_interval)
            silent = time.monotonic() - self._snapshot_seen
            if silent > patience:
                self._shared_broker = False
                if self.queue.mark_failed(f"no queue snapshot from the poller leader for "
                                          f"{silent:.0f} s"):
                    self._on_queue_change()

    # -- the Celery event bridge ------------------------------------------------

    def _on_worker_table(self, table: List[dict], counts: Dict[str, int]) -> None:
        """The bridge's worker table and counters arrived: clients hear of it
        when a worker came or went (heartbeat times alone ride along with
        the next `queue_status`)."""
        self.metrics.bridge_counts(counts)
        moved = workers_moved(self._worker_table, table)
        self._worker_table = table
        if moved:
            self._on_queue_change()

    def _on_queue_change(self) -> None:
        everything = self.queue_status_frame()
        before, self._pushed_views = self._pushed_views, {}

        def frame_for(scope: Scope) -> Optional[bytes]:
            # A scoped client hears of a change only when its own view moved:
            # pushes must not tell it when other users' tasks come and go.
            view = scope.owners & self._task_owners
            if before.get(view) == self._view_content(view):
                return None
            return self.queue_status_frame(scope)

        sent = self.hub.send_live(everything, frame_for)
        self.metrics.sent_of(messages.QUEUE_STATUS).inc(sent)
