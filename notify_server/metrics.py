"""Prometheus metrics of one server process (prometheus_client).

One `Metrics` per `NotifyServer`, with its own registry: no module globals,
so tests and several servers in one process do not collide.
"""

import asyncio
from typing import Callable, Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from notify_server.protocol.stream import Event

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                   5.0, 10.0)


class Metrics:
    def __init__(self, open_connections: Callable[[], int]):
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
        self.loop_lag = Histogram("notify_event_loop_lag_seconds",
                                  "How late a 100 ms timer fires on the event loop.",
                                  buckets=LATENCY_BUCKETS, registry=registry)

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
