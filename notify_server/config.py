"""What the core is told: small frozen configs with defaults, handed down.

The entry point (settings.py) builds a `ServerConfig` from its settings; a
test builds only the part it needs, e.g.
``ServerConfig(access=AccessConfig(auth_secrets=(SECRET,)))``. Nothing
here reads the environment.
"""

import dataclasses
from typing import Mapping, Optional, Tuple

from notify_server.alerts.webhooks import Webhook
from notify_server.celery_metrics import DEFAULT_RUNTIME_BUCKETS
from notify_server.protocol.emit_script import (DEFAULT_FAILED_RETENTION, DEFAULT_MAX_RECORDS,
                                                DEFAULT_RETENTION, DEFAULT_TIMELINE)
from notify_server.protocol.names import (DEFAULT_HISTORY_MAXLEN, DEFAULT_OWNER_ARG, DEFAULT_PREFIX,
                                          DEFAULT_SUBJECT_ARG, Keys)


@dataclasses.dataclass(frozen=True)
class RedisConfig:
    """Where the events, the history and the shared snapshot live."""

    url: Optional[str] = None                    # with sentinels: only the db and credentials
    sentinels: Tuple[Tuple[str, int], ...] = ()  # (host, port) of each Redis Sentinel, or ()
    master: Optional[str] = None                 # the master the sentinels watch
    prefix: str = DEFAULT_PREFIX                 # of every key (`Keys`)
    history_maxlen: int = DEFAULT_HISTORY_MAXLEN  # when the bridge writes the history
    wait_replicas: int = 0                       # the bridge's writes wait for this many replicas
    wait_timeout: float = 0.1                    # at most this long

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)


@dataclasses.dataclass(frozen=True)
class CeleryConfig:
    """The broker, how it is polled, and how tasks name their subject and owner."""

    broker_url: str = "redis://127.0.0.1:6379/0"
    broker_transport_options: Mapping[str, object] = dataclasses.field(default_factory=dict)
    queues: Tuple[str, ...] = ("celery",)  # depth always listed (workers' queues are added)
    subject_arg: str = DEFAULT_SUBJECT_ARG
    owner_arg: str = DEFAULT_OWNER_ARG
    poll_interval: float = 2.0
    inspect_timeout: float = 1.0
    discovery_interval: float = 30.0
    refresh_delay: float = 0.2
    events: bool = False          # bridge Celery's own event stream
    enable_events: bool = False   # and tell workers to send task events


@dataclasses.dataclass(frozen=True)
class SocketConfig:
    """One client socket: how much it may leave unread, how it is pinged."""

    max_client_buffer: int = 1024 * 1024
    ping_interval: float = 25.0   # 0: no pings
    ping_timeout: float = 10.0


@dataclasses.dataclass(frozen=True)
class AccessConfig:
    """Who may connect and how much they may ask."""

    auth_secrets: Tuple[str, ...] = ()  # empty: open mode, every client sees everything
    auth_leeway: float = 5.0
    max_connections: int = 10000        # 0: no limit
    max_connections_per_ip: int = 500   # 0: no limit
    action_rate: float = 20.0           # actions per second per socket
    action_burst: int = 40
    max_subscribe: int = 1000


@dataclasses.dataclass(frozen=True)
class RecordsConfig:
    """How long task records are kept and how many (docs/protocol.md 6.5)."""

    retention: float = DEFAULT_RETENTION                # seconds after a record's first event
    failed_retention: float = DEFAULT_FAILED_RETENTION  # the same, for failed tasks
    max_records: int = DEFAULT_MAX_RECORDS              # beyond it the oldest finished go first
    timeline: int = DEFAULT_TIMELINE                    # events a record lists (oldest dropped)


@dataclasses.dataclass(frozen=True)
class MetricsConfig:
    """The celery-exporter metrics: their labels and the runtime histogram's buckets."""

    hostname_label: bool = False  # label task counters by worker host too (more series)
    runtime_buckets: Tuple[float, ...] = DEFAULT_RUNTIME_BUCKETS  # seconds; +Inf is added


@dataclasses.dataclass(frozen=True)
class AlertsConfig:
    """Failure alerts: where they are posted, which events, how many (README "Alerts")."""

    webhooks: Tuple[Webhook, ...] = ()      # none: no alerts
    statuses: Tuple[str, ...] = ("failed",)  # names of `alerts.rules.STATUS_TYPES`
    tasks: Tuple[str, ...] = ()             # fnmatch patterns on the task name; none: all
    per_minute: int = 10                    # posts per webhook per minute, then summaries
    timeout: float = 5.0                    # seconds a post may take (connecting: at most 3)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    """Everything one server process needs, by part."""

    redis: RedisConfig = dataclasses.field(default_factory=RedisConfig)
    celery: CeleryConfig = dataclasses.field(default_factory=CeleryConfig)
    sockets: SocketConfig = dataclasses.field(default_factory=SocketConfig)
    access: AccessConfig = dataclasses.field(default_factory=AccessConfig)
    records: RecordsConfig = dataclasses.field(default_factory=RecordsConfig)
    metrics: MetricsConfig = dataclasses.field(default_factory=MetricsConfig)
    alerts: AlertsConfig = dataclasses.field(default_factory=AlertsConfig)
    leader_ttl: float = 5.0           # the poller lease
    instance: str = "notify-server"   # this process, as the lease and /readyz name it

    @property
    def broker_master(self) -> Optional[str]:
        """The Sentinel master of a `sentinel://` broker, else None."""
        return self.redis.master if self.celery.broker_url.startswith("sentinel://") else None
