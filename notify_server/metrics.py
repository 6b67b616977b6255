"""Prometheus metrics of one server process (prometheus_client).

One `Metrics` per `NotifyServer`, with its own registry: no module globals,
so tests and several servers in one process do not collide. Besides the
server's own `notify_*` metrics it exports Celery's task metrics under
celery-exporter's names (`celery_metrics` has their rules).
"""

import asyncio
from typing import Callable, Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from notify_server.celery_metrics import FAILED, STATES, TaskCounter, queue_lengths, worker_gauges
from notify_server.config import MetricsConfig
from notify_server.protocol.stream import Event

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


class Metrics:
    """`celery_data()` is the queue data to export as celery-exporter's
    gauges, or None while this process is not the one to export them."""

    def __init__(self, open_connections: Callable[[], int],
                 config: MetricsConfig = MetricsConfig(),
                 celery_data: Callable[[], Optional[dict]] = lambda: None):
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connections = Gauge("notify_open_connections", "Open WebSocket connections.",
                                 registry=registry)
        self.connections.set_function(open_connections)
        self.sent = Counter("notify_messages_sent", "Messages handed to client sockets, by type.",
                            ["type"], registry=registry)
        self._sent_children: dict = {}
        self.dropped = Counter("notify_messages_dropped",
                               "Messages not delivered, by reason (invalid, slow_client).",
                               ["reason"], registry=registry)
        self.slow_disconnects = Counter("notify_slow_client_disconnects",
                                        "Clients closed with 4008 for not reading.",
                                        registry=registry)
        self.slow_dropped_bytes = Counter("notify_slow_client_dropped_bytes",
                                          "Backlog bytes dropped when a slow client was closed.",
                                          registry=registry)
        self.refused = Counter("notify_refused",
                               "Sockets and actions refused, by reason (limit: over a "
                               "connection limit; token: no valid token; rate: over the "
                               "action rate; flood: closed with 1008).",
                               ["reason"], registry=registry)
        self.relay_lag = Histogram("notify_relay_lag_seconds",
                                   "From the event's XADD (its stream id) to its broadcast.",
                                   buckets=LATENCY_BUCKETS, registry=registry)
        self.poll_duration = Histogram("notify_inspect_poll_duration_seconds",
                                       "Duration of one Celery inspect poll (3 calls).",
                                       buckets=LATENCY_BUCKETS, registry=registry)
        self.poll_failures = Counter("notify_inspect_poll_failures",
                                     "Inspect polls that failed or got no worker reply.",
                                     registry=registry)
        self.leader = Gauge("notify_poller_leader",
                            "1 while this process holds the poller lease and polls inspect.",
                            registry=registry)
        self.leader_changes = Counter("notify_poller_leader_changes",
                                      "Changes of the poller leader this process saw.",
                                      registry=registry)
        self.redis_up = Gauge("notify_redis_connected",
                              "1 while the events subscription is up.", registry=registry)
        self.bridge_events = Counter(
            "notify_bridge_events",
            "Celery events the bridge read (received), and protocol events it wrote "
            "(written) or found already written by the hook or another process (duplicates); "
            "messages on the event channel it could not read (malformed).",
            ["outcome"], registry=registry)
        self._bridge_totals: dict = {}
        self.alerts_sent = Counter("notify_alerts_sent",
                                   "Alert posts a webhook answered with 2xx, by body format.",
                                   ["format"], registry=registry)
        self.alerts_failed = Counter("notify_alerts_failed",
                                     "Alert posts that failed (connection, timeout, 5xx, 408, "
                                     "429) and are retried.", registry=registry)
        self.alerts_dropped = Counter("notify_alerts_dropped",
                                      "Alert posts given up, by reason (http_<status>: another "
                                      "status the webhook answered).", ["reason"],
                                      registry=registry)
        self.alerts_summarised = Counter("notify_alerts_summarised",
                                         "Alerts above the per-minute budget, posted within a "
                                         "summary.", registry=registry)
        self.loop_lag = Histogram("notify_event_loop_lag_seconds",
                                  "How late a 100 ms timer fires on the event loop.",
                                  buckets=LATENCY_BUCKETS, registry=registry)
        # For leak checks (bench/soak.py): back to its baseline once the sockets are.
        self.asyncio_tasks = Gauge("notify_asyncio_tasks",
                                   "Tasks not yet done on this process's event loop.",
                                   registry=registry)
        self.asyncio_tasks.set_function(loop_task_count)
        self._task_counter = TaskCounter(config.hostname_label)
        labels = list(self._task_counter.label_names)
        self.task_states = {
            state: Counter(f"celery_task_{state}", f"Task events: {state}, counted once by "
                           "the poller lease holder.",
                           labels + (["exception"] if state == FAILED else []),
                           registry=registry)
            for state in STATES.values()}
        self.task_runtime = Histogram("celery_task_runtime",
                                      "Runtime in seconds of the tasks that succeeded.", labels,
                                      buckets=config.runtime_buckets, registry=registry)
        self._task_label_sets: set = set()
        registry.register(_CeleryGauges(celery_data))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def sent_of(self, kind: str) -> Counter:
        """The `sent` counter of one message type (labelled children are cached)."""
        child = self._sent_children.get(kind)
        if child is None:
            child = self._sent_children[kind] = self.sent.labels(kind)
        return child

    def broadcast(self, events: Iterable[Event], recipients: int, now: float) -> None:
        """Count a batch sent to `recipients` sessions and observe each event's lag."""
        for event in events:
            if recipients:
                self.sent_of(event.type).inc(recipients)
            if event.key is not None:
                self.relay_lag.observe(max(0.0, now - event.key[0] / 1000.0))

    def subscription(self, connected: bool) -> None:
        """The events subscription went up or down."""
        self.redis_up.set(1 if connected else 0)

    def slow_client_closed(self, dropped_bytes: int) -> None:
        """A slow client was closed with its backlog of `dropped_bytes` dropped."""
        self.slow_disconnects.inc()
        self.slow_dropped_bytes.inc(dropped_bytes)

    def delivered(self, events: Iterable[Event]) -> None:
        for event in events:
            self.sent_of(event.type).inc()

    def bridge_counts(self, totals: dict) -> None:
        """Count the bridge helper's totals since it started (a restarted helper starts at 0)."""
        for outcome, total in totals.items():
            before = self._bridge_totals.get(outcome, 0)
            delta = total - before if total >= before else total
            self._bridge_totals[outcome] = total
            if delta:
                self.bridge_events.labels(outcome).inc(delta)

    def task_events(self, events: Iterable[Event]) -> None:
        """Count task events in celery-exporter's counters and runtime
        histogram. The first event of a label set makes every state's
        counter of it appear at 0 (`failed` with `exception=""`), as
        celery-exporter does, so rates are 0 rather than absent."""
        for event in events:
            counted = self._task_counter.count(event)
            if counted is None:
                continue
            if counted.labels not in self._task_label_sets:
                self._task_label_sets.add(counted.labels)
                for state, counter in self.task_states.items():
                    counter.labels(*counted.labels, *([""] if state == FAILED else [])).inc(0)
            extra = () if counted.exception is None else (counted.exception,)
            self.task_states[counted.state].labels(*counted.labels, *extra).inc()
            if counted.runtime is not None:
                self.task_runtime.labels(*counted.labels).observe(counted.runtime)

    def poll(self, duration: float, error: Optional[str]) -> None:
        self.poll_duration.observe(duration)
        if error is not None:
            self.poll_failures.inc()

    async def watch_loop_lag(self, interval: float = 0.1) -> None:
        """Observe forever how late `interval`-second sleeps wake up."""
        loop = asyncio.get_running_loop()
        while True:
            expected = loop.time() + interval
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - expected))


def loop_task_count() -> int:
    """`len(asyncio.all_tasks())` of the loop running in this thread (the server reads
    its metrics on its loop), or 0 when none runs here."""
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop in this thread
        return 0


class _CeleryGauges:
    """celery-exporter's gauges, computed from `data()` at each scrape, so a
    process that stops exporting them (it lost the lease) shows none."""

    def __init__(self, data: Callable[[], Optional[dict]]):
        self._data = data

    def describe(self):
        return self._families()

    def collect(self):
        families = self._families()
        data = self._data()
        if data is not None:
            up, active = worker_gauges(data)
            for host in sorted(up):
                families[0].add_metric([host], up[host])
                families[1].add_metric([host], active[host])
            for queue, length in sorted(queue_lengths(data).items()):
                families[2].add_metric([queue], length)
        return families

    @staticmethod
    def _families():
        return [GaugeMetricFamily("celery_worker_up",
                                  "1 while the worker is online (from the lease holder).",
                                  labels=["hostname"]),
                GaugeMetricFamily("celery_worker_tasks_active",
                                  "Tasks the worker is running (from the lease holder).",
                                  labels=["hostname"]),
                GaugeMetricFamily("celery_queue_length",
                                  "Messages waiting in the broker queue (from the lease holder).",
                                  labels=["queue_name"])]
