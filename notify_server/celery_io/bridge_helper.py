"""What runs in the event bridge's helper process: Celery's events in, Redis writes out.

An adapter. `run_helper` is the process's main (`bridge.CeleryEventBridge`
starts it). On a Redis broker, `bridge_redis.RedisEventReader` reads the
event channel itself and hands `EventForwarder.on_events` every event
waiting, `task.multi` lists unpacked; on any other broker (RabbitMQ, ...)
Celery's `EventReceiver` consumes the event exchange and calls
`EventForwarder.on_event` for each event. Either calls `tick` on every turn
of its loop, at least once a second. The forwarder maps the events
(`bridge_mapping`) and, as `bridge_rules.Takeover` decides, writes them with
the workers' own `Emitter`, all the events of one read in pipelined batches
(`Emitter.emit_many`): the history stream and the channel, with ids and
transition keys, so clients get bridged events exactly as hooked ones. The
rules of when it probes, expires, reports and enables events are in
`bridge_rules`; here is the I/O they call for.

To the server process it sends, on `pipe`, `("ready",)` whenever its
subscription receives events again, and `("table", workers, counts)` with
the worker table (`CeleryEventMapper.worker_states`) and its counters.
"""

import dataclasses
import logging
import time
import uuid
from typing import Iterable, List, Optional

from notify_server.celery_io.bridge_mapping import CeleryEventMapper, Outgoing
from notify_server.celery_io.bridge_redis import RedisEventReader, is_redis_broker
from notify_server.celery_io.bridge_rules import (ENABLE_EVENTS_INTERVAL, EXPIRY_CHECK_INTERVAL,
                                                  Every, Probe, TableReports, Takeover)
from notify_server.celery_io.broker import broker_app
from notify_server.config import CeleryConfig, RedisConfig
from notify_server.worker.emitter import Emitter

log = logging.getLogger(__name__)

# The type of the helper's own probe event.
PROBE = "notify-bridge-probe"


@dataclasses.dataclass(frozen=True)
class BridgeOptions:
    """What the helper process needs (plain values: it is pickled to it)."""

    celery: CeleryConfig          # with `broker_transport_options` a dict
    broker_master: Optional[str]  # the Sentinel master of a sentinel:// broker
    redis: RedisConfig            # where it writes
    replay_window: float          # `bridge_rules.replay_window`


def run_helper(options: BridgeOptions, leading, pipe) -> None:
    """The helper's main: consume Celery's events until the process is
    stopped; never returns. Either reader reconnects by itself. `leading` is
    a shared byte, 1 while the server process holds the lease; `pipe` the
    sending end of a pipe to the server process."""
    celery = options.celery
    app = broker_app(celery.broker_url, options.broker_master, celery.broker_transport_options)
    redis = options.redis
    emitter = Emitter(redis.url, prefix=redis.prefix, history_maxlen=redis.history_maxlen,
                      sentinels=redis.sentinels, master=redis.master,
                      wait_replicas=redis.wait_replicas, wait_timeout=redis.wait_timeout)
    forwarder = EventForwarder(app, options, emitter, leading, pipe)
    direct = is_redis_broker(celery.broker_url)
    log.info("reading Celery events from the broker (%s)%s",
             "its Redis event channel" if direct else "Celery's EventReceiver",
             "; enabling them on workers every %.0f s" % ENABLE_EVENTS_INTERVAL
             if celery.enable_events else "")
    if direct:
        RedisEventReader(app, forwarder).run()
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": forwarder.on_event})
        receiver.on_iteration = forwarder.tick
        ready = receiver.on_consume_ready

        def on_consume_ready(*args, **kwargs):
            forwarder.connected()
            return ready(*args, **kwargs)
        receiver.on_consume_ready = on_consume_ready
        receiver.run()


class EventForwarder:
    """The reader's callbacks: maps, writes while leading, reports to the server.

    Called only by the reader's loop, on one thread. Never raises: a
    broker fault is logged and tried again later; a bug in mapping an event
    is logged once per exception type and that event skipped.
    """

    def __init__(self, app, options: BridgeOptions, emitter: Emitter, leading, pipe):
        self._app, self._emitter, self._leading, self._pipe = app, emitter, leading, pipe
        self._enable_events = options.celery.enable_events
        self._mapper = CeleryEventMapper(options.celery.subject_arg, options.celery.owner_arg)
        self._takeover: Takeover[Outgoing] = Takeover(options.replay_window)
        self._probe = Probe()
        self._table = TableReports()
        self._expiry_check = Every(EXPIRY_CHECK_INTERVAL)
        self._enable = Every(ENABLE_EVENTS_INTERVAL)
        self._received = 0
        self._malformed = 0
        self._bugs_logged: set = set()
        self._malformed_logged: set = set()
        self._came_or_went = False  # in the events being handled

    def on_event(self, event: dict) -> None:
        """One event, as Celery's `EventReceiver` hands it over."""
        self.on_events([event])

    def on_events(self, events: List[dict]) -> None:
        """Events read together, oldest first: mapped in order, and what
        they cause written in one batch (while leading)."""
        now = time.time()
        outgoing: List[Outgoing] = []
        self._came_or_went = False
        for event in events:
            try:
                outgoing.extend(self._handle(event, now))
            except Exception as exc:  # our bug: logged, and the stream goes on
                if type(exc) not in self._bugs_logged:
                    self._bugs_logged.add(type(exc))
                    log.exception("a Celery event could not be bridged: a bug in notify-server, "
                                  "please report it (logged once per exception type): %.200r",
                                  event)
        if outgoing:
            self._write_if_leading(outgoing, now)
        if self._came_or_went:
            self._report_table()

    def malformed(self, reason: str) -> None:
        """A message on the event channel could not be read: counted, and
        logged once per `reason`."""
        self._malformed += 1
        if reason not in self._malformed_logged:
            self._malformed_logged.add(reason)
            log.warning("a message on the Celery event channel was skipped: %s (logged once "
                        "per reason; counted in notify_bridge_events_total{outcome=\"malformed\"})",
                        reason)

    def connected(self) -> None:
        """(Re)connected to the broker: probe until the subscription receives
        events; workers silent during the outage get a fresh expiry window
        (Celery's receiver asks them for a heartbeat)."""
        self._mapper.reconnected(time.time())
        self._probe.connected(uuid.uuid4().hex)

    def tick(self) -> None:
        """One turn of the receiver's loop (before each wait for events, at
        least once a second): probe, take over, expire, report, enable events."""
        now = time.time()
        probe = self._probe.due(now)
        if probe is not None:
            self._publish_probe(probe)
        leading = self._lead(now)
        if self._expiry_check.due(now):
            gone = self._mapper.expire(now)
            if gone:
                self._write_if_leading(gone, now)
                if self._table.changed(now, came_or_went=True):
                    self._report_table()
        if self._table.due(now):
            self._report_table()
        if self._enable_events and leading and self._enable.due(now):
            self._enable_events_on_workers()

    def _handle(self, event: dict, now: float) -> List[Outgoing]:
        """What one event causes to be written; says when the probe is back,
        and notes a worker that came or went (the table goes after the writes)."""
        kind = event.get("type") or ""
        if kind == PROBE:
            if self._probe.came_back(event.get("uuid")):
                log.info("receiving Celery events")
                self._pipe.send(("ready",))
            return []
        self._received += 1
        if kind.startswith("task-"):
            return self._mapper.task_event(event)
        if kind.startswith("worker-"):
            outgoing = self._mapper.worker_event(event, now)
            if self._table.changed(now, came_or_went=bool(outgoing)):
                self._came_or_went = True
            return outgoing
        return []

    def _lead(self, now: float) -> bool:
        """Whether the server process leads now; on a takeover, writes again
        what the old leader may have missed."""
        leading = bool(self._leading.value)
        replay = self._takeover.lead(leading, now)
        if replay is not None:
            log.info("writing Celery events (%d recent ones again; duplicates are refused)",
                     len(replay))
            self._write_to_redis(replay)
        return leading

    def _write_if_leading(self, outgoing: Iterable[Outgoing], now: float) -> None:
        self._lead(now)
        self._write_to_redis(self._takeover.read(outgoing, now))

    def _write_to_redis(self, outgoing: Iterable[Outgoing]) -> None:
        self._emitter.emit_many((item.message, item.once, item.record) for item in outgoing)

    def _report_table(self) -> None:
        counts = {"received": self._received, "written": self._emitter.written,
                  "duplicates": self._emitter.duplicates, "malformed": self._malformed}
        self._pipe.send(("table", self._mapper.worker_states(), counts))

    def _publish_probe(self, probe_id: str) -> None:
        try:
            with self._app.events.default_dispatcher(hostname="notify-bridge") as dispatcher:
                dispatcher.send(PROBE, uuid=probe_id)
        except Exception as exc:  # a broker fault: tried again at the probe interval
            log.debug("could not send the probe event: %s", exc)

    def _enable_events_on_workers(self) -> None:
        try:
            self._app.control.enable_events()
        except Exception as exc:  # a broker fault: the receiver reconnects on its own
            log.warning("could not send enable_events to the workers: %s", exc)
