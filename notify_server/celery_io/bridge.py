"""The Celery event bridge: Celery's event stream in, protocol events out.

An adapter, in the server process: `CeleryEventBridge` starts and watches
the bridge's helper process (`bridge_helper`, spawned by `helper_process`:
kombu's consumer loop must not hold the server's GIL), which reads
Celery's `EventReceiver` on the broker, maps each event (`bridge_mapping`)
and writes it with the workers' own `Emitter`: the history stream and the
channel, with ids, so clients get bridged events exactly as hooked ones.

Every server process with the bridge on consumes the stream; only the one
holding the poller lease writes (`CeleryEventBridge.lead`). Every write
carries its transition's key, so nothing is written twice: not when the
worker hook writes the same transition, and not when a process that just
took the lease writes again what it received in the last
`bridge_rules.replay_window` (what the old leader wrote is refused; what it
never wrote, because it died, is written now).

The helper tells the server process when its subscription receives events
(it sends itself a probe event until one comes back), and its worker table
(online, offline, last heartbeat) whenever a worker comes or goes, and at
most once a second otherwise, with counts of what it read and wrote.
"""

import asyncio
import dataclasses
import logging
import multiprocessing.process
from typing import Callable, Dict, List, Optional

from notify_server.celery_io.bridge_helper import BridgeOptions, run_helper
from notify_server.celery_io.bridge_rules import replay_window
from notify_server.celery_io.helper_process import SPAWN, helper_process
from notify_server.config import ServerConfig

log = logging.getLogger(__name__)

# Seconds before a helper that died is started again.
RESTART_DELAY = 1.0


class CeleryEventBridge:
    """Runs and watches the helper process, from the event loop.

    `on_worker_table(workers, counts)` is called on the loop with the
    helper's worker table (`CeleryEventMapper.worker_states`) and its
    counters (`received`, `written`, `duplicates`: totals since it
    started). `ready` is set while the helper consumes Celery's events (from
    its consumer's start to its exit). A helper that exits is started again
    after `RESTART_DELAY`, until `stop`. All methods run on the event-loop
    thread.
    """

    def __init__(self, config: ServerConfig,
                 on_worker_table: Callable[[List[dict], Dict[str, int]], None]):
        self._options = BridgeOptions(
            celery=dataclasses.replace(
                config.celery,
                broker_transport_options=dict(config.celery.broker_transport_options)),
            broker_master=config.broker_master, redis=config.redis,
            replay_window=replay_window(config.leader_ttl))
        self._on_worker_table = on_worker_table
        self._leading = SPAWN.Value("b", 0, lock=False)
        self._process: Optional[multiprocessing.process.BaseProcess] = None
        self._reader = None
        self._restart: Optional[asyncio.TimerHandle] = None
        self._stopped = False
        self.ready = asyncio.Event()

    def start(self) -> None:
        """Start the helper process; returns at once (`ready` says when it receives events)."""
        reader, writer = SPAWN.Pipe(duplex=False)
        self._process = helper_process(run_helper, self._options, self._leading, writer,
                                       name="notify-celery-events")
        self._process.start()
        writer.close()
        self._reader = reader
        asyncio.get_running_loop().add_reader(reader.fileno(), self._readable)

    def lead(self, leading: bool) -> None:
        """Write from now on (this process holds the lease), or stop writing."""
        self._leading.value = 1 if leading else 0

    async def stop(self) -> None:
        """Stop the helper for good: SIGTERM, then SIGKILL if it is still
        alive after 5 s; no restart follows."""
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
                    self._on_worker_table(*message[1:])
        except (EOFError, OSError):
            self.ready.clear()  # until the next helper consumes
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
