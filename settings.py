"""The server's settings: one immutable object, built once and handed down.

Every setting is declared once, in `SETTINGS`: its environment variable, the
rule its value must meet, its meaning, and either the `ServerConfig` field it
is copied to (whose default it takes) or its own default. The `Settings`
class, the flags of run.py and the README's configuration table
(`config_table()`) are all derived from that. A flag wins over its variable.
"""

import argparse
import dataclasses
import json
import math
import re
from typing import Any, Callable, Mapping, Optional, Sequence

from notify_server.access.auth import MIN_SECRET_LENGTH
from notify_server.alerts.rules import STATUS_TYPES
from notify_server.alerts.webhooks import parse_webhooks
from notify_server.config import (AccessConfig, AlertsConfig, CeleryConfig, MetricsConfig,
                                  RecordsConfig, RedisConfig, ServerConfig, SocketConfig)
from notify_server.protocol.names import DEFAULT_SENTINEL_MASTER, parse_addresses
from notify_server.redis_io.clients import RedisLocation, sentinel_broker_url

# More clock leeway than this would keep an expired token working for long.
MAX_LEEWAY = 30.0


class SettingError(ValueError):
    """A setting's value is not allowed: the message names the variable or
    flag, the value and what is allowed, on one line."""


def config_field(path: str) -> dataclasses.Field:
    """The field of `ServerConfig` that `path` names: "celery.poll_interval",
    or "leader_ttl" for one of its own. KeyError for a name it lacks."""
    config = ServerConfig
    *parts, name = path.split(".")
    for part in parts:
        config = {field.name: field for field in dataclasses.fields(config)}[part].type
    return {field.name: field for field in dataclasses.fields(config)}[name]


_UNSET = object()  # a Setting without its own default


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting. With `to` its value is copied to that `ServerConfig`
    field and its default is that field's; without, it keeps its own
    `default` (a web-only setting, or one that reaches the core through a rule
    of `Settings.server_config`). Never both: a default lives in one place."""

    name: str
    env: str
    parse: Callable[[str], Any]  # raises ValueError saying what is allowed ("must be ...")
    help: str                    # Markdown, as the README's table shows it
    to: Optional[str] = None
    default: Any = _UNSET
    secret: bool = False         # an error names the variable, never echoes the value

    def __post_init__(self) -> None:
        if (self.to is None) == (self.default is _UNSET):
            raise TypeError(f"setting {self.name}: give exactly one of `to` and `default`")

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def field(self) -> dataclasses.Field:
        """The field `Settings` holds it in, with its default."""
        if self.to is None:
            return dataclasses.field(default=self.default)
        source = config_field(self.to)
        return dataclasses.field(default=source.default, default_factory=source.default_factory)


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    return value.strip()


def _broker_url(value: str) -> Optional[str]:
    if value.strip() and not re.match(r"[a-z][a-z0-9+.-]*://", value.strip()):
        raise ValueError("must be a broker URL such as redis://host:6379/0 or amqp://host//, "
                         "or empty")
    return value.strip() or None


def _redis_url(value: str) -> Optional[str]:
    if value and not re.match(r"(redis|rediss|unix)://", value):
        raise ValueError("must be a redis://, rediss:// or unix:// URL, or empty")
    return value or None


def _sentinels(value: str) -> tuple:
    try:
        return parse_addresses(value)
    except ValueError:
        raise ValueError("must be comma-separated host:port addresses of Redis Sentinels, "
                         "such as 10.0.0.1:26379,10.0.0.2:26379, or empty") from None


def _identifier(value: str) -> str:
    if not value.isidentifier():
        raise ValueError("must be a Python argument name")
    return value


def _whole(rule: str, minimum: int, maximum: float = math.inf) -> Callable[[str], int]:
    """Digits only (no sign, no `_`), from `minimum` to `maximum`; else ValueError(rule)."""
    def parse(value: str) -> int:
        number = int(value) if value.strip().isdigit() else -1
        if not minimum <= number <= maximum:
            raise ValueError(rule)
        return number
    return parse


def _count(minimum: int, meaning: str) -> Callable[[str], int]:
    return _whole(f"must be a whole number, at least {minimum}{meaning}", minimum)


_port = _whole("must be an integer from 0 to 65535 (0 picks a free port)", 0, 65535)
_positive_int = _whole("must be a whole number of bytes greater than 0", 1)


def _real(rule: str, minimum: float, inclusive: bool) -> Callable[[str], float]:
    """A finite number above `minimum` (or at it, when `inclusive`); else ValueError(rule)."""
    def parse(value: str) -> float:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or number < minimum or (number == minimum and not inclusive):
            raise ValueError(rule)
        return number
    return parse


def _seconds(minimum: float, inclusive: bool) -> Callable[[str], float]:
    allowed = f"{'at least' if inclusive else 'greater than'} {minimum:g}"
    return _real(f"must be a number of seconds {allowed}", minimum, inclusive)


_rate = _real("must be a number of actions per second greater than 0", 0, inclusive=False)


def _secrets(value: str) -> tuple:
    secrets = tuple(part.strip() for part in value.split(",") if part.strip())
    if any(len(secret) < MIN_SECRET_LENGTH for secret in secrets):
        raise ValueError(f"each comma-separated secret must be at least {MIN_SECRET_LENGTH} "
                         "characters (e.g. from: python -c 'import secrets; "
                         "print(secrets.token_urlsafe(32))')")
    return secrets


def _leeway(value: str) -> float:
    number = _seconds(0, inclusive=True)(value)
    if number > MAX_LEEWAY:
        raise ValueError(f"must be a number of seconds from 0 to {MAX_LEEWAY:g}")
    return number


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be one of 1, true, yes, on (true) or 0, false, no, off, empty (false)")


def _origins(value: str) -> tuple:
    origins = tuple(part.strip().rstrip("/") for part in value.split(",") if part.strip())
    if not origins or not all(o == "*" or re.fullmatch(r"[a-z][a-z0-9+.-]*://[^/\s]+", o)
                              for o in origins):
        raise ValueError("must be * or a comma-separated list of origins such as "
                         "https://app.example.com")
    return origins


def _queue_names(value: str) -> tuple:
    return tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))


def _json_object(value: str) -> dict:
    try:
        parsed = json.loads(value) if value.strip() else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError('must be a JSON object such as {"global_keyprefix": "app:", '
                         '"priority_steps": [0, 3, 6, 9]}, or empty')
    return parsed


def _buckets(value: str) -> tuple:
    try:
        bounds = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        bounds = ()
    if not bounds or not all(math.isfinite(b) and b > 0 for b in bounds) or any(
            later <= earlier for earlier, later in zip(bounds, bounds[1:])):
        raise ValueError("must be increasing positive numbers of seconds, comma-separated, "
                         "such as 0.1,1,10 (+Inf is added)")
    return bounds


def _alert_statuses(value: str) -> tuple:
    statuses = tuple(dict.fromkeys(part.strip() for part in value.split(",") if part.strip()))
    if not statuses or any(status not in STATUS_TYPES for status in statuses):
        raise ValueError(f"must be one or more of {', '.join(STATUS_TYPES)}, comma-separated")
    return statuses


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


SETTINGS = (
    Setting("host", "NOTIFY_HOST", _text,
            "address to listen on (localhost binds both 127.0.0.1 and ::1)", default="localhost"),
    Setting("port", "NOTIFY_PORT", _port,
            "port to listen on (0 picks a free one and prints it)", default=8000),
    Setting("redis_url", "REDIS_URL", _redis_url,
            "Redis for events; unset starts an embedded redis-server", to="redis.url"),
    Setting("redis_sentinels", "NOTIFY_REDIS_SENTINELS", _sentinels,
            "Redis Sentinel addresses, `host:port` comma-separated: Redis is the primary they "
            "name, followed through failovers (`REDIS_URL`, if set, then gives only the "
            "database and password)", to="redis.sentinels"),
    Setting("redis_master", "NOTIFY_REDIS_MASTER", _text,
            "the master name the sentinels watch", default=DEFAULT_SENTINEL_MASTER),
    Setting("broker_url", "CELERY_BROKER_URL", _broker_url,
            "Celery broker the poller inspects; defaults to the Redis URL", default=None),
    Setting("broker_transport_options", "NOTIFY_BROKER_TRANSPORT_OPTIONS", _json_object,
            "your Celery app's `broker_transport_options` as a JSON object, e.g. "
            '`{"global_keyprefix": "app:", "priority_steps": [0, 3, 6, 9]}`: inspect and the '
            "queue depths then use the broker keys your workers use; the poller's own "
            "`socket_timeout`, `socket_connect_timeout` and `max_retries` replace yours (a poll "
            "must fail fast); your `master_name` wins over `NOTIFY_REDIS_MASTER`",
            to="celery.broker_transport_options"),
    Setting("queues", "NOTIFY_QUEUES", _queue_names,
            "queues `queue_status.queues` always lists, comma-separated (empty: only the "
            "workers' queues); see [Queue depth](#queue-depth)", to="celery.queues"),
    Setting("prefix", "NOTIFY_PREFIX", _text,
            "prefix of the Redis keys: PREFIX:events and PREFIX:events:history",
            to="redis.prefix"),
    Setting("subject_arg", "NOTIFY_SUBJECT_ARG", _identifier,
            "keyword argument that names a task's subject (avid); else the first positional",
            to="celery.subject_arg"),
    Setting("poll_interval", "NOTIFY_POLL_INTERVAL", _seconds(0, inclusive=False),
            "seconds between Celery inspect polls", to="celery.poll_interval"),
    Setting("inspect_timeout", "NOTIFY_INSPECT_TIMEOUT", _seconds(0, inclusive=False),
            "seconds an inspect call waits for worker replies", to="celery.inspect_timeout"),
    Setting("discovery_interval", "NOTIFY_DISCOVERY_INTERVAL", _seconds(0, inclusive=False),
            "seconds between polls that wait the full timeout to find new workers",
            to="celery.discovery_interval"),
    Setting("refresh_delay", "NOTIFY_REFRESH_DELAY", _seconds(0, inclusive=True),
            "debounce before an extra poll after a task event", to="celery.refresh_delay"),
    Setting("max_message_size", "NOTIFY_MAX_MESSAGE_SIZE", _positive_int,
            "largest inbound WebSocket frame in bytes; larger closes with 1009", default=65536),
    Setting("max_client_buffer", "NOTIFY_MAX_CLIENT_BUFFER", _positive_int,
            "bytes a client may leave unread before it is closed with 4008 (slow)",
            to="sockets.max_client_buffer"),
    Setting("ping_interval", "NOTIFY_PING_INTERVAL", _seconds(0, inclusive=True),
            "seconds between WebSocket pings (0 disables)", to="sockets.ping_interval"),
    Setting("ping_timeout", "NOTIFY_PING_TIMEOUT", _seconds(0, inclusive=False),
            "seconds without a pong before a peer is closed as dead (at most the ping interval)",
            to="sockets.ping_timeout"),
    Setting("shutdown_timeout", "NOTIFY_SHUTDOWN_TIMEOUT", _seconds(0, inclusive=True),
            "seconds SIGTERM waits for clients to close before exiting", default=5.0),
    Setting("allowed_origins", "NOTIFY_ALLOWED_ORIGINS", _origins,
            "comma-separated Origin values allowed to open a socket; * allows any",
            default=("*",)),
    Setting("auth_secret", "NOTIFY_AUTH_SECRET", _secrets,
            "HS256 secret(s) for client tokens, comma-separated, each at least "
            f"{MIN_SECRET_LENGTH} characters (any verifies: rotation); unset is open mode, see "
            "[Tokens and per-user scoping](#tokens-and-per-user-scoping)",
            to="access.auth_secrets"),
    Setting("auth_leeway", "NOTIFY_AUTH_LEEWAY", _leeway,
            "seconds of clock skew allowed on a token's `exp` and `nbf` "
            f"(0 to {MAX_LEEWAY:g})", to="access.auth_leeway"),
    Setting("owner_arg", "NOTIFY_OWNER_ARG", _identifier,
            "keyword argument that names a task's owner (workers read the same variable)",
            to="celery.owner_arg"),
    Setting("metrics_token", "NOTIFY_METRICS_TOKEN", str.strip,
            "bearer token `/metrics` requires; unset leaves `/metrics` open", default=""),
    Setting("metrics_hostname_label", "NOTIFY_METRICS_HOSTNAME_LABEL", _bool,
            "label the `celery_task_*` counters and `celery_task_runtime` by worker host "
            "(`hostname`) as well as by task `name`: a series per name and host, hence off "
            "(see [Metrics](#metrics))", to="metrics.hostname_label"),
    Setting("metrics_runtime_buckets", "NOTIFY_METRICS_RUNTIME_BUCKETS", _buckets,
            "upper bounds, in seconds, of `celery_task_runtime`'s buckets, comma-separated "
            "and increasing (`+Inf` is added)", to="metrics.runtime_buckets"),
    Setting("max_connections", "NOTIFY_MAX_CONNECTIONS", _count(0, " (0: no limit)"),
            "open sockets in all; more get 503 before the upgrade (0: no limit)",
            to="access.max_connections"),
    Setting("max_connections_per_ip", "NOTIFY_MAX_CONNECTIONS_PER_IP",
            _count(0, " (0: no limit)"),
            "open sockets per client address; more get 429 before the upgrade (0: no limit). "
            "Behind a proxy, the address is the client's only with `NOTIFY_XHEADERS`",
            to="access.max_connections_per_ip"),
    Setting("action_rate", "NOTIFY_ACTION_RATE", _rate,
            "actions a socket may send per second; more get an `error` `rate_limited`",
            to="access.action_rate"),
    Setting("action_burst", "NOTIFY_ACTION_BURST", _count(1, ""),
            "actions a socket may send at once; this many refused in a row close it with 1008",
            to="access.action_burst"),
    Setting("max_subscribe", "NOTIFY_MAX_SUBSCRIBE", _count(1, ""),
            "task ids and subjects one `subscribe` may name", to="access.max_subscribe"),
    Setting("max_header_size", "NOTIFY_MAX_HEADER_SIZE", _count(1024, " bytes"),
            "largest HTTP request head in bytes (request line with `?token=`, and headers); a "
            "larger one is dropped unanswered", default=16384),
    Setting("header_timeout", "NOTIFY_HEADER_TIMEOUT", _seconds(0, inclusive=False),
            "seconds a client may take to send its request headers (and an HTTP connection "
            "may stay idle)", default=10.0),
    Setting("leader_ttl", "NOTIFY_LEADER_TTL", _seconds(0.3, inclusive=True),
            "seconds the poller lease lasts: of all processes on one Redis only its holder "
            "polls inspect; a dead holder is replaced within twice this (see "
            "[Several processes](#several-processes-one-poller))", to="leader_ttl"),
    Setting("celery_events", "NOTIFY_CELERY_EVENTS", _bool,
            "bridge Celery's own event stream (workers started with `-E`) to clients: no "
            "worker hook needed (see [Zero-code Celery](#zero-code-celery-celerys-own-events))",
            to="celery.events"),
    Setting("enable_events", "NOTIFY_ENABLE_EVENTS", _bool,
            "send Celery's `enable_events` to all workers every 5 s, for workers started "
            "without `-E`; turns the bridge on", to="celery.enable_events"),
    Setting("history_maxlen", "NOTIFY_HISTORY_MAXLEN", _positive_int,
            "events the history keeps (about) when the bridge writes; give the workers' hook "
            "the same", to="redis.history_maxlen"),
    Setting("emit_wait_replicas", "NOTIFY_EMIT_WAIT_REPLICAS", _count(0, ""),
            "replicas each event the bridge writes must reach (Redis `WAIT`) before it counts "
            "as written; give the workers' hook the same (0: the primary's answer)",
            to="redis.wait_replicas"),
    Setting("emit_wait_timeout", "NOTIFY_EMIT_WAIT_TIMEOUT", _seconds(0, inclusive=False),
            "seconds a write waits for those replicas; one that did not reach them is counted "
            "and logged, not retried", to="redis.wait_timeout"),
    Setting("log_level", "NOTIFY_LOG_LEVEL", _log_level, "logging level", default="INFO"),
    Setting("xheaders", "NOTIFY_XHEADERS", _bool,
            "trust X-Real-IP/X-Forwarded-For and X-Forwarded-Proto from a reverse proxy (set "
            "it only behind one, see Deployment)", default=False),
    Setting("task_retention", "NOTIFY_TASK_RETENTION", _seconds(0, inclusive=False),
            "seconds a task's record is kept after its first event (7 days)",
            to="records.retention"),
    Setting("task_failed_retention", "NOTIFY_TASK_FAILED_RETENTION",
            _seconds(0, inclusive=False),
            "seconds a failed task's record is kept (30 days; the last to go when "
            "`NOTIFY_TASK_MAX` is reached)", to="records.failed_retention"),
    Setting("task_max", "NOTIFY_TASK_MAX", _count(1, ""),
            "task records kept at most; beyond it the oldest finished ones go first",
            to="records.max_records"),
    Setting("alert_webhooks", "NOTIFY_ALERT_WEBHOOKS", parse_webhooks,
            "webhooks that failure alerts are posted to, comma-separated, each `url` (plain "
            "JSON) or `slack=url` (a Slack incoming webhook); see [Alerts](#alerts)",
            to="alerts.webhooks", secret=True),
    Setting("alert_statuses", "NOTIFY_ALERT_STATUSES", _alert_statuses,
            f"which events are alerted, comma-separated: {', '.join(STATUS_TYPES)}",
            to="alerts.statuses"),
    Setting("alert_tasks", "NOTIFY_ALERT_TASKS", _queue_names,
            "task names alerted, comma-separated shell-style patterns such as `billing.*` "
            "(unset: all; events without a task name match only then)", to="alerts.tasks"),
    Setting("alert_per_minute", "NOTIFY_ALERT_PER_MINUTE", _count(1, ""),
            "posts per webhook at once and per minute after; the alerts above it go in one "
            "summary post", to="alerts.per_minute"),
    Setting("alert_timeout", "NOTIFY_ALERT_TIMEOUT", _seconds(0, inclusive=False),
            "seconds an alert post may take (connecting: at most 3) before it is retried",
            to="alerts.timeout"),
    Setting("demo", "NOTIFY_DEMO", _bool,
            "also start a Celery worker on the demo app and a task producer", default=False),
)


class _Derived:
    """What `Settings` derives from its values: the broker, Redis, the core's config."""

    @property
    def effective_broker_url(self) -> Optional[str]:
        """The broker to inspect: CELERY_BROKER_URL, else the events' Redis
        (behind Sentinel: kombu's `sentinel://` form of it)."""
        if self.broker_url:
            return self.broker_url
        if self.redis_sentinels:
            return sentinel_broker_url(self.redis_location)
        return self.redis_url

    @property
    def redis_location(self) -> RedisLocation:
        return RedisLocation(self.redis_url, self.redis_sentinels,
                             self.redis_master if self.redis_sentinels else None)

    def server_config(self, instance: str) -> ServerConfig:
        """What the core needs; `redis_url` must be set (run.py fills it in).
        `instance` names this process (host:port:pid) to the others."""
        parts = {"redis": {}, "celery": {}, "sockets": {}, "access": {}, "records": {},
                 "metrics": {}, "alerts": {}, "": {}}
        for setting in SETTINGS:
            if setting.to is not None:
                part, _, name = setting.to.rpartition(".")
                parts[part][name] = getattr(self, setting.name)
        # The rules: the master counts only behind sentinels; the broker defaults to the
        # events' Redis; enabling events only makes sense to read them: it turns the bridge on.
        parts["redis"]["master"] = self.redis_master if self.redis_sentinels else None
        parts["celery"]["broker_url"] = self.effective_broker_url
        parts["celery"]["events"] = self.celery_events or self.enable_events
        return ServerConfig(redis=RedisConfig(**parts["redis"]),
                            celery=CeleryConfig(**parts["celery"]),
                            sockets=SocketConfig(**parts["sockets"]),
                            access=AccessConfig(**parts["access"]),
                            records=RecordsConfig(**parts["records"]),
                            metrics=MetricsConfig(**parts["metrics"]),
                            alerts=AlertsConfig(**parts["alerts"]),
                            instance=instance, **parts[""])


Settings = dataclasses.make_dataclass(
    "Settings", [(setting.name, Any, setting.field()) for setting in SETTINGS],
    bases=(_Derived,), frozen=True, namespace={
        "__module__": __name__,
        "__doc__": "Every setting's value, by name (`settings.port`); defaults as declared."})


def _shown(value: Any) -> str:
    """A default as the README's table shows it."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or (isinstance(value, (str, tuple, dict)) and not value):
        return "(unset)"
    if isinstance(value, tuple):
        value = ",".join(item if isinstance(item, str) else f"{item:g}" for item in value)
    return f"`{value}`"


def config_table() -> str:
    """The README's configuration table, in Markdown, from `SETTINGS`."""
    defaults = Settings()
    rows = [f"| `{setting.env}` | `{setting.flag}` | {_shown(getattr(defaults, setting.name))} "
            f"| {setting.help} |" for setting in SETTINGS]
    return "\n".join(["| variable | flag | default | meaning |", "| --- | --- | --- | --- |",
                      *rows]) + "\n"


def _plain(markdown: str) -> str:
    """`markdown` for --help: a link to a README section names it, code loses its ticks."""
    return re.sub(r"\[([^\]]+)\]\(#[^)]*\)", r"\1 in the README", markdown).replace("`", "")


def build_parser() -> argparse.ArgumentParser:
    """Flags as raw strings (None when absent; switches True or False): `load`
    parses and checks them, so a flag and its variable get the same one-line error."""
    parser = argparse.ArgumentParser(
        prog="run.py", description="Realtime Celery task notifications over WebSocket.")
    defaults = Settings()
    for setting in SETTINGS:
        action = argparse.BooleanOptionalAction if setting.parse is _bool else "store"
        shown = _plain(_shown(getattr(defaults, setting.name))).replace("(unset)", "unset")
        parser.add_argument(setting.flag, dest=setting.name, default=None, action=action,
                            help=f"{_plain(setting.help)} (env {setting.env}, default: {shown})")
    return parser


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Build the settings from flags, then environment variables, then defaults.

    Raises `SettingError` for a value that is not allowed (nothing is
    clamped or silently disabled), SystemExit for a malformed command line.
    """
    flags = vars(build_parser().parse_args(list(argv)))
    values, given = {}, {}  # given: setting name -> (flag or variable, raw value)
    for setting in SETTINGS:
        raw, source = flags[setting.name], setting.flag
        if raw is None and setting.env in environ:
            raw, source = environ[setting.env], setting.env
        if raw is None:
            continue
        given[setting.name] = (source, raw)
        if isinstance(raw, bool):
            values[setting.name] = raw
            continue
        try:
            values[setting.name] = setting.parse(raw)
        except ValueError as exc:
            shown = source if setting.secret else f"{source}={raw!r}"
            raise SettingError(f"{shown}: {exc}") from None
    loaded = Settings(**values)
    if loaded.ping_interval > 0 and loaded.ping_timeout > loaded.ping_interval:
        if "ping_timeout" in given:
            source, raw = given["ping_timeout"]
            rule = f"must be at most the ping interval ({loaded.ping_interval:g} s)"
        else:
            source, raw = given["ping_interval"]
            rule = (f"must be at least the ping timeout ({loaded.ping_timeout:g} s), "
                    "or 0 to disable pings")
        raise SettingError(f"{source}={raw!r}: {rule}")
    return loaded
