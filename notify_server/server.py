"""Wiring: one `ServerConfig` in; every long-lived part built, connected and run.

Of all processes sharing a Redis, the one holding the lease (`Lease`) polls
Celery inspect and shares each result through Redis (`SharedSnapshot`);
every process, that one included, serves `queue_status` and REST from what
its relay brings back, so all of them show the same snapshot. The web layer
(`handlers/`) is handed the one `NotifyServer` and asks it for what it
shows; this package never imports the web layer or the settings module.
All methods run on the event-loop thread.
"""

import asyncio
import logging
import time
from typing import List, Optional, Set, Tuple

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from tornado.iostream import IOStream

from notify_server.access.admission import Admission
from notify_server.access.auth import EVERYONE, Scope
from notify_server.alerts.rules import AlertRules
from notify_server.celery_io.bridge import CeleryEventBridge
from notify_server.celery_io.poller import QueuePoller
from notify_server.config import ServerConfig
from notify_server.delivery.hub import Hub
from notify_server.delivery.queue_views import QueueViews
from notify_server.delivery.session import Session
from notify_server.edge.connection import OPEN, Connection
from notify_server.edge.heartbeat import Heartbeat
from notify_server.metrics import Metrics
from notify_server.protocol import close_codes, messages, task_events
from notify_server.protocol.names import TASK_LISTS
from notify_server.protocol.stream import Event
from notify_server.queue.state import QueueState
from notify_server.queue.views import for_scope, with_workers, workers_moved
from notify_server.redis_io.alert_sender import AlertCounts, AlertSender
from notify_server.redis_io.clients import RedisLocation
from notify_server.redis_io.history import History
from notify_server.redis_io.lease import Lease
from notify_server.redis_io.records import TaskRecords
from notify_server.redis_io.relay import Relay
from notify_server.redis_io.resume import Resumer
from notify_server.redis_io.snapshot_store import SharedSnapshot

log = logging.getLogger(__name__)

# Events after which the queue lists move: poll again soon.
LIFECYCLE = frozenset((task_events.TASK_STARTED, task_events.TASK_COMPLETED,
                       task_events.TASK_FAILED, task_events.TASK_RETRYING,
                       task_events.TASK_REVOKED, task_events.TASK_RECEIVED,
                       task_events.TASK_REJECTED, task_events.WORKER_ONLINE,
                       task_events.WORKER_OFFLINE))

# How long each step of `stop` may take (the bridge waits up to 5 s for its
# helper before killing it) before it is logged by name and left behind.
STOP_STEP_BOUND = 2.0
BRIDGE_STOP_BOUND = 6.0
# How often connections whose socket closed unnoticed are looked for.
CLOSED_SWEEP_INTERVAL = 2.0
# How long a socket's record read may take before it gets `unavailable`.
RECORD_READ_TIMEOUT = 3.0

EMPTY_QUEUE = {**{key: [] for key in TASK_LISTS}, "workers": [], "queues": [],
               "updated_at": None, "stale": True}


class NotifyServer:
    """Owns every long-lived part: `admission` (who may connect), `hub`
    (fan-out), `relay` (the Redis subscription), `snapshot` (the shared
    queue snapshot), `poller` and `bridge` (Celery), `lease`, `alerts` (a
    sender per webhook), `heartbeat` and `metrics`."""

    def __init__(self, config: ServerConfig):
        self.config = config
        keys = config.redis.keys
        self.queue = QueueState()
        self.views = QueueViews()
        # Every socket not yet CLOSED (open or closing): what shutdown waits for.
        self._connections: Set[Connection] = set()
        self._all_closed: Optional[asyncio.Event] = None  # set, while stopping, once none is left
        # Celery's task metrics come from the lease holder only: one count per event in all.
        self.metrics = Metrics(open_connections=lambda: len(self._connections),
                               config=config.metrics, celery_data=self._celery_metrics_data)
        # Bound once: every socket keeps them (a bound method made per socket is 64 bytes).
        self._delivered = self.metrics.delivered
        self._slow_client_closed = self.metrics.slow_client_closed
        self.admission = Admission(config.access, time.time, time.monotonic, _call_later,
                                   lambda reason: self.metrics.refused.labels(reason).inc())
        self.hub = Hub(on_sent=lambda kind, count: self.metrics.sent_of(kind).inc(count))
        self.heartbeat = Heartbeat(config.sockets.ping_interval, config.sockets.ping_timeout)
        self.location = RedisLocation(config.redis.url, config.redis.sentinels,
                                      config.redis.master)
        self.redis = self.location.client(socket_timeout=5.0, socket_connect_timeout=2.0,
                                          retry=Retry(NoBackoff(), 1))
        self.records = TaskRecords(self.redis, keys, config.records)
        self.resumer = Resumer(History(self.redis, keys.history_stream,
                                       self.metrics.dropped.labels("invalid").inc),
                               self._send_queue_status, self._send_resync)
        # The lease gets its own client: a renewal must fail fast, well within the lease.
        self._lease_redis = self.location.client(
            socket_timeout=config.leader_ttl / 3,
            socket_connect_timeout=config.leader_ttl / 3, retry=Retry(NoBackoff(), 0))
        self.lease = Lease(self._lease_redis, keys.leader_key, config.instance,
                           config.leader_ttl, on_change=self._on_leadership)
        self.alerts = self._alert_senders()
        self.snapshot = SharedSnapshot(self._lease_redis, keys, config.instance, self.queue,
                                       config.celery.poll_interval, config.leader_ttl,
                                       on_change=self._on_queue_change)
        self.relay = Relay(self.location.client, keys, on_events=self._on_events,
                           on_resync=self._on_resync, on_connected=self.metrics.subscription,
                           on_invalid=self.metrics.dropped.labels("invalid").inc,
                           on_refused=self.metrics.dropped.labels("refused").inc,
                           on_snapshot=self.snapshot.received,
                           history_maxlen=config.redis.history_maxlen)
        # The poller keeps its own state: what it found, before the round trip through Redis.
        self.poller = QueuePoller(config.celery, config.broker_master, QueueState(),
                                  self.snapshot.publish, on_poll=self.metrics.poll)
        # The bridge's worker table (None while it is off or has not reported).
        self._worker_table: Optional[List[dict]] = None
        self.bridge = (CeleryEventBridge(config, self._on_worker_table)
                       if config.celery.events else None)
        self._last_holder: Optional[str] = None
        self._tasks: List[asyncio.Task] = []

    def _alert_senders(self) -> List[AlertSender]:
        """One sender per alert webhook; each sends only while this process holds the lease."""
        config, keys = self.config.alerts, self.config.redis.keys
        rules = AlertRules(config.statuses, config.tasks)
        metrics = self.metrics
        counts = AlertCounts(sent=lambda format: metrics.alerts_sent.labels(format).inc(),
                             failed=metrics.alerts_failed.inc,
                             dropped=lambda reason: metrics.alerts_dropped.labels(reason).inc(),
                             summarised=metrics.alerts_summarised.inc)
        return [AlertSender(hook, self.redis, History(self.redis, keys.history_stream),
                            keys.alert_position(hook.url), keys.leader_key, self.config.instance,
                            rules, config.per_minute, config.timeout, self.lease.holds, counts)
                for hook in config.webhooks]

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
                       loop.create_task(self.snapshot.watch()),
                       loop.create_task(self.records.keep(lambda: self.lease.leading)),
                       loop.create_task(self._sweep_closed()),
                       *(loop.create_task(sender.run()) for sender in self.alerts)]
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

        Waits until the last socket is gone, at most `timeout` seconds from
        the call; then drops the connections of the clients that have not
        answered the close frame, and logs how many and which.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        self._all_closed = asyncio.Event()
        for connection in [c for c in self._connections if c.stream_closed]:
            connection.lost()  # closed already, unnoticed: nothing to wait for
        if not self._connections:
            self._all_closed.set()
        for connection in tuple(self._connections):
            connection.close(*close_codes.SHUTTING_DOWN)
        await _bounded("stopping the inspect poller", self.poller.stop())
        if self.bridge is not None:
            await _bounded("stopping the Celery event bridge", self.bridge.stop(),
                           BRIDGE_STOP_BOUND)
        for task in self._tasks:
            task.cancel()
        await _bounded("ending the relay, lease and timers",
                       asyncio.gather(*self._tasks, return_exceptions=True))
        for sender in self.alerts:
            sender.close()
        await _bounded("releasing the poller lease", self.lease.release())
        await _bounded("closing the Redis connections",
                       asyncio.gather(self._lease_redis.aclose(), self.redis.aclose()))
        try:
            await asyncio.wait_for(self._all_closed.wait(),
                                   max(0.0, deadline - asyncio.get_running_loop().time()))
        except asyncio.TimeoutError:
            unanswered = list(self._connections)
            if unanswered:
                peers = sorted({connection.peer for connection in unanswered})
                log.warning("%d client(s) did not answer the close frame within %.1f s; "
                            "dropping their connections (from %s)", len(unanswered), timeout,
                            ", ".join(peers[:5]) + (", ..." if len(peers) > 5 else ""))
            for connection in unanswered:
                connection.abort()

    # -- one client socket ----------------------------------------------------

    def connect(self, stream: IOStream, close_socket, peer: str,
                scope: Scope = EVERYONE) -> Tuple[Connection, Session]:
        """A WebSocket just opened on `stream` for a client seeing `scope`:
        its `Connection` (state and writes; `close_socket(code, reason)` is
        Tornado's close) and its `Session`. The socket is pinged from now on,
        closed with 4001 when its token expires, and receives nothing until
        `join` or `start_resume`. While the server is stopping, the
        connection is closed with 1001 at once."""
        seat = _Seat(self)
        connection = seat.connection = Connection(
            stream, limit=self.config.sockets.max_client_buffer, peer=peer,
            close_socket=close_socket, on_leave=seat.leave, on_closed=seat.closed,
            on_slow=self._slow_client_closed)
        session = seat.session = Session(connection.write, connection.close, self._delivered,
                                         scope)
        self._connections.add(connection)
        self.admission.admit(connection, scope)
        self.heartbeat.add(connection)
        if self._all_closed is not None:
            connection.close(*close_codes.SHUTTING_DOWN)
        return connection, session

    def _left(self, connection: Connection, session: Session) -> None:
        self.hub.discard(session)
        self.heartbeat.discard(connection)

    def _closed(self, connection: Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self.admission.leave(connection)
        if self._all_closed is not None and not self._connections:
            self._all_closed.set()

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
        self.resumer.start(session, last_event_id)

    async def subscribe(self, session: Session, task_ids: Optional[frozenset],
                        avids: Optional[frozenset]) -> None:
        """Filter `session` to these tasks and subjects; first send the
        record of each named task it may see, before any later event of it
        (live events wait meanwhile). Raises RedisError or OSError, after
        the filter is set and live events flow again, when records cannot
        be read."""
        session.subscribe(task_ids, avids)
        wanted = [task_id for task_id in task_ids or () if messages.valid_task_id(task_id)]
        if not wanted:
            return
        session.hold_records()
        frames, floors = b"", {}
        try:
            found = await asyncio.wait_for(self.records.get_many(wanted), RECORD_READ_TIMEOUT)
            shown = [record for owner, record in found.values() if session.scope.sees(owner)]
            frames = b"".join(messages.frame(messages.task(r)) for r in shown)
            floors = {record["task_id"]: record["last_id"] for record in shown}
            self.metrics.sent_of(messages.TASK).inc(len(shown))
        except asyncio.TimeoutError:
            raise OSError(f"no answer from Redis within {RECORD_READ_TIMEOUT:g} s") from None
        finally:
            session.release_records(frames, floors)

    async def _sweep_closed(self) -> None:
        """Forget, every CLOSED_SWEEP_INTERVAL, connections whose socket closed
        without Tornado's `on_close` (a close frame whose reason is not UTF-8
        ends Tornado's read loop without it): they would keep their slots."""
        while True:
            await asyncio.sleep(CLOSED_SWEEP_INTERVAL)
            stale = [c for c in self._connections if c.stream_closed]
            for connection in stale:
                connection.lost()
            if stale:
                log.info("%d socket(s) closed without a close callback; slots released",
                         len(stale))

    # -- what handlers ask for ----------------------------------------------

    def health(self) -> dict:
        """Readiness and its parts: ``{"ready", "redis", "broker",
        "queue_stale_reason", "clients", "leader", "instance",
        "celery_events"}``. Ready means the Redis subscription is up and the
        broker answered the last inspect poll; no worker answering makes
        `queue_status` stale but not the server unready (another server
        process would not do better). `celery_events` is None while the
        bridge is off, else whether its helper consumes Celery's events."""
        redis_up = self.relay.connected
        broker_up = self.snapshot.broker_up
        return {"ready": redis_up and broker_up, "redis": redis_up, "broker": broker_up,
                "queue_stale_reason": self.queue.stale_reason,
                "clients": len(self._connections), "leader": self.lease.holder,
                "instance": self.config.instance,
                "celery_events": None if self.bridge is None else self.bridge.ready.is_set()}

    def queue_snapshot(self, scope: Scope = EVERYONE) -> Tuple[Optional[dict], Optional[str]]:
        """The latest queue data `scope` may see (None before any poll
        succeeded) and why it is stale (None when fresh)."""
        data = self._queue_data()
        return (None if data is None else for_scope(data, scope.owners)), self.queue.stale_reason

    def queue_status_frame(self, scope: Scope = EVERYONE) -> bytes:
        """The framed `queue_status` for one client seeing `scope`: the
        latest snapshot, or empty lists marked stale when no poll has
        succeeded yet. Clients whose view is the same share one frame."""
        data = self._queue_data()
        return self.views.frame(with_workers(EMPTY_QUEUE, self._worker_table)
                                if data is None else data, scope)

    def _queue_data(self) -> Optional[dict]:
        """The shared snapshot, its workers as the bridge last saw them."""
        data = self.queue.data()
        return None if data is None else with_workers(data, self._worker_table)

    def _celery_metrics_data(self) -> Optional[dict]:
        """The queue data celery-exporter's gauges show: while this process
        holds the lease, else None (then another process exports them)."""
        return self._queue_data() if self.lease.holds() else None

    def _send_queue_status(self, session: Session) -> None:
        session.write(self.queue_status_frame(session.scope))
        self.metrics.sent_of(messages.QUEUE_STATUS).inc()

    def _send_resync(self, session: Session, reason: str) -> None:
        session.write(messages.frame(messages.resync(reason)))
        self.metrics.sent_of(messages.RESYNC).inc()

    # -- what the relay, the lease and the bridge report --------------------------

    def _on_events(self, events: List[Event]) -> None:
        self.metrics.broadcast(events, self.hub.publish(events), time.time())
        if self.lease.holds():
            self.metrics.task_events(events)
        if any(event.type in LIFECYCLE for event in events):
            self.poller.request_refresh()

    def _on_resync(self, reason: str) -> None:
        sent = self.hub.send_all(messages.frame(messages.resync(reason)))
        self.metrics.sent_of(messages.RESYNC).inc(sent)

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

    def _on_worker_table(self, table: List[dict], counts: dict) -> None:
        """The bridge's worker table and counters arrived: clients hear of it
        when a worker came or went (heartbeat times alone ride along with
        the next `queue_status`)."""
        self.metrics.bridge_counts(counts)
        moved = workers_moved(self._worker_table, table)
        self._worker_table = table
        if moved:
            self._on_queue_change()

    def _on_queue_change(self) -> None:
        data = self._queue_data()
        everything, frame_for = self.views.push(
            with_workers(EMPTY_QUEUE, self._worker_table) if data is None else data)
        sent = self.hub.send_live(everything, frame_for)
        self.metrics.sent_of(messages.QUEUE_STATUS).inc(sent)


class _Seat:
    """One socket's place in the server: its `Connection`'s `on_leave` and
    `on_closed` are bound methods of this small object (two closures, with
    their cells, took twice its memory per socket)."""

    __slots__ = ("server", "connection", "session")

    def __init__(self, server: NotifyServer):
        self.server = server
        self.connection: Optional[Connection] = None
        self.session: Optional[Session] = None

    def leave(self) -> None:
        self.server._left(self.connection, self.session)

    def closed(self) -> None:
        self.server._closed(self.connection)


async def _bounded(step: str, awaitable, bound: float = STOP_STEP_BOUND) -> None:
    """Await one step of `stop`, at most `bound` seconds: a step that overruns
    is logged by name and left behind, so shutdown always ends."""
    try:
        await asyncio.wait_for(awaitable, bound)
    except asyncio.TimeoutError:
        log.warning("shutting down: %s took more than %.1f s; going on without it", step, bound)
    except Exception:  # a bug: logged, and the other steps still run
        log.exception("shutting down: %s failed; going on", step)


def _call_later(delay: float, callback, *args) -> asyncio.TimerHandle:
    return asyncio.get_running_loop().call_later(delay, callback, *args)
