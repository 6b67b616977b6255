"""The Celery event bridge: Celery's event stream in, protocol events out.

An adapter. A helper *process* (spawned, like the poller's: kombu's
consumer loop must not hold the server's GIL) runs Celery's
`EventReceiver` on the broker, maps each event (`celery_events`) and writes
it with the workers' own `Emitter`: the history stream and the channel,
with ids, so clients get bridged events exactly as hooked ones.

Every server process with the bridge on consumes the stream; only the one
holding the poller lease writes (`CeleryEventBridge.lead`). Every write
carries its transition's key, so nothing is written twice: not when the
worker hook writes the same transition, and not when a process that just
took the lease writes again what it received in the last `replay_window`
seconds (what the old leader wrote is refused; what it never wrote, because
it died, is written now).

The helper tells the server process when its subscription receives events
(it sends itself a probe event until one comes back), and its worker table
(online, offline, last heartbeat) whenever a worker comes or goes, and at
most once a second otherwise, with counts of what it read and wrote.
"""

import asyncio
import collections
import dataclasses
import logging
import multiprocessing
import signal
import threading
import time
import uuid
from typing import Callable, Deque, Dict, List, Optional, Tuple

log = logging.getLogger(__name__)

# Seconds between two `enable_events` broadcasts (Flower's interval).
ENABLE_EVENTS_INTERVAL = 5.0
# At most this often the worker table goes to the server when only heartbeats moved.
TABLE_INTERVAL = 1.0
# Seconds before a helper that died is started again.
RESTART_DELAY = 1.0
# The helper's own event, sent until its subscription receives it: only then
# is the bridge ready (kombu may subscribe after the consumer says it is).
PROBE = "notify-bridge-probe"
PROBE_INTERVAL = 0.5
# Seconds between two looks for workers whose heartbeats stopped.
EXPIRY_CHECK_INTERVAL = 0.5
# At most this many recent events are kept for a takeover (about 50 s at 2,000 a second).
MAX_RECENT = 100_000


@dataclasses.dataclass(frozen=True)
class BridgeOptions:
    """What the helper process needs (plain values: it is pickled to it)."""

    broker_url: str
    broker_master: Optional[str]        # the Sentinel master of a sentinel:// broker
    broker_transport_options: dict      # the workers' own (global_keyprefix names channels too)
    redis_url: Optional[str]
    redis_sentinels: Tuple[Tuple[str, int], ...]
    redis_master: Optional[str]
    prefix: str
    history_maxlen: int
    subject_arg: str
    owner_arg: str
    enable_events: bool
    replay_window: float
    log_level: int


class CeleryEventBridge:
    """Runs and watches the helper process from the event loop.

    `on_table(workers, counts)` is called on the loop with the helper's
    worker table (`CeleryEventMapper.worker_states`) and its counters
    (`received`, `written`, `duplicates`: totals since it started). `ready`
    is set once the helper receives events.
    """

    def __init__(self, options: BridgeOptions,
                 on_table: Callable[[List[dict], Dict[str, int]], None]):
        self._options, self._on_table = options, on_table
        self._context = multiprocessing.get_context("spawn")
        self._leading = self._context.Value("b", 0, lock=False)
        self._process: Optional[multiprocessing.Process] = None
        self._reader = None
        self._restart: Optional[asyncio.TimerHandle] = None
        self._stopped = False
        self.ready = asyncio.Event()

    def start(self) -> None:
        reader, writer = self._context.Pipe(duplex=False)
        self._process = self._context.Process(
            target=run_helper, args=(self._options, self._leading, writer),
            name="notify-celery-events", daemon=True)
        self._process.start()
        writer.close()
        self._reader = reader
        asyncio.get_running_loop().add_reader(reader.fileno(), self._readable)

    def lead(self, leading: bool) -> None:
        """Write from now on (this process holds the lease), or stop writing."""
        self._leading.value = 1 if leading else 0

    async def stop(self) -> None:
        self._stopped = True
        if self._restart is not None:
            self._restart.cancel()
        self._close_reader()
        process = self._process
        if process is not None and process.is_alive():
            process.terminate()
            await asyncio.get_running_loop().run_in_executor(None, process.join, 5.0)
            if process.is_alive():
                process.kill()

    def _readable(self) -> None:
        try:
            while self._reader.poll():
                message = self._reader.recv()
                if message[0] == "ready":
                    self.ready.set()
                else:
                    self._on_table(*message[1:])
        except (EOFError, OSError):
            self._close_reader()
            if not self._stopped:
                log.error("the Celery event bridge process exited (%s); restarting it in %.0f s",
                          self._process.exitcode, RESTART_DELAY)
                self._restart = asyncio.get_running_loop().call_later(
                    RESTART_DELAY, self._restart_now)

    def _restart_now(self) -> None:
        self._restart = None
        if not self._stopped:
            self.start()

    def _close_reader(self) -> None:
        if self._reader is not None:
            asyncio.get_running_loop().remove_reader(self._reader.fileno())
            self._reader.close()
            self._reader = None


# -- the helper process ----------------------------------------------------------

def run_helper(options: BridgeOptions, leading, pipe) -> None:
    """The helper's main: consume Celery's events until the server goes away."""
    # Imported here: the server process never loads kombu's consumer for this.
    from celery import Celery

    from notify_server import children
    from notify_server.celery_io.bridge_mapping import CeleryEventMapper
    from notify_server.worker.emitter import Emitter
    from notify_server.celery_io.poller import exit_with_parent

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    children.terminate_with_parent()  # a server killed with -9 takes its writer along
    logging.basicConfig(level=options.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    threading.Thread(target=exit_with_parent, args=(multiprocessing.parent_process().pid,),
                     daemon=True).start()
    app = Celery("notify-server-events", broker=options.broker_url, set_as_current=False)
    app.conf.broker_transport_options = {
        **({"master_name": options.broker_master} if options.broker_master else {}),
        **options.broker_transport_options}
    emitter = Emitter(options.redis_url, prefix=options.prefix,
                      history_maxlen=options.history_maxlen,
                      sentinels=options.redis_sentinels, master=options.redis_master)
    helper = _Helper(app, options, CeleryEventMapper(options.subject_arg, options.owner_arg),
                     emitter, leading, pipe)
    log.info("reading Celery events from the broker%s",
             "; enabling them on workers every %.0f s" % ENABLE_EVENTS_INTERVAL
             if options.enable_events else "")
    with app.connection_for_read() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": helper.on_event})
        receiver.on_iteration = helper.tick
        ready = receiver.on_consume_ready

        def on_consume_ready(*args, **kwargs):
            helper.connected()
            return ready(*args, **kwargs)
        receiver.on_consume_ready = on_consume_ready
        receiver.run()  # reconnects by itself; ends with the process


class _Helper:
    """The helper's state: the mapper, recent writes, leadership, the table."""

    def __init__(self, app, options: BridgeOptions, mapper, emitter, leading, pipe):
        self._app, self._options, self._mapper = app, options, mapper
        self._emitter, self._leading, self._pipe = emitter, leading, pipe
        self._was_leading = False
        # (when, Outgoing): what a new leader writes again (the old one may not have).
        self._recent: Deque[tuple] = collections.deque(maxlen=MAX_RECENT)
        self._next_enable = 0.0
        self._table_sent_at = 0.0
        self._table_dirty = True
        self._received = 0
        self._bugs_logged: set = set()
        self._probe: Optional[str] = None  # the probe's id until it came back
        self._next_probe = 0.0
        self._next_expiry = 0.0

    def on_event(self, event: dict) -> None:
        try:
            self._handle(event)
        except Exception as exc:  # our bug: logged, and the stream goes on
            if type(exc) not in self._bugs_logged:
                self._bugs_logged.add(type(exc))
                log.exception("a Celery event could not be bridged: a bug in notify-server, "
                              "please report it (logged once per exception type): %.200r", event)

    def _handle(self, event: dict) -> None:
        kind = event.get("type") or ""
        now = time.time()
        if kind == PROBE:
            if event.get("uuid") == self._probe:
                self._probe = None
                log.info("receiving Celery events")
                self._pipe.send(("ready",))
            return
        self._received += 1
        if kind.startswith("task-"):
            self._send(self._mapper.task_event(event), now)
        elif kind.startswith("worker-"):
            outgoing = self._mapper.worker_event(event, now)
            self._table_dirty = True
            self._send(outgoing, now)
            if outgoing:
                self._send_table(now)

    def connected(self) -> None:
        """(Re)connected to the broker: workers silent during the outage get
        a fresh expiry window (Celery's receiver asks them for a heartbeat)."""
        now = time.time()
        for worker in self._mapper.workers.values():
            worker.heard_at = max(worker.heard_at, now)
        self._probe, self._next_probe = uuid.uuid4().hex, 0.0

    def tick(self) -> None:
        now = time.time()
        if self._probe is not None and now >= self._next_probe:
            self._next_probe = now + PROBE_INTERVAL
            try:
                with self._app.events.default_dispatcher(hostname="notify-bridge") as dispatcher:
                    dispatcher.send(PROBE, uuid=self._probe)
            except Exception as exc:  # a broker fault: tried again next time
                log.debug("could not send the probe event: %s", exc)
        leading = bool(self._leading.value)
        if leading and not self._was_leading:
            log.info("writing Celery events (%d recent ones again; duplicates are refused)",
                     len(self._recent))
            for _, outgoing in self._recent:
                self._write(outgoing)
        self._was_leading = leading
        if now >= self._next_expiry:  # not per event: the table may hold many workers
            self._next_expiry = now + EXPIRY_CHECK_INTERVAL
            gone = self._mapper.expire(now)
            if gone:
                self._send(gone, now)
                self._send_table(now)
        horizon = now - self._options.replay_window
        while self._recent and self._recent[0][0] < horizon:
            self._recent.popleft()
        if self._table_dirty and now - self._table_sent_at >= TABLE_INTERVAL:
            self._send_table(now)
        if self._options.enable_events and leading and now >= self._next_enable:
            self._next_enable = now + ENABLE_EVENTS_INTERVAL
            try:
                self._app.control.enable_events()
            except Exception as exc:  # a broker fault: the receiver reconnects on its own
                log.warning("could not send enable_events to the workers: %s", exc)

    def _send(self, outgoing: list, now: float) -> None:
        leading = bool(self._leading.value)
        for item in outgoing:
            self._recent.append((now, item))
            if leading and self._was_leading:
                self._write(item)

    def _write(self, outgoing) -> None:
        self._emitter.emit(outgoing.message, once=outgoing.once)

    def _send_table(self, now: float) -> None:
        self._table_sent_at, self._table_dirty = now, False
        counts = {"received": self._received, "written": self._emitter.written,
                  "duplicates": self._emitter.duplicates}
        self._pipe.send(("table", self._mapper.worker_states(), counts))
