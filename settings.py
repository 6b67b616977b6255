"""The server's settings: one immutable object, built once and handed down.

Every setting has an environment variable and a command-line flag; the flag wins.
`Settings` holds the defaults; `SETTINGS` names each one's variable, parser and
meaning. The flag parser is built from them; a unit test keeps the README's
configuration table in step.
"""

import argparse
import dataclasses
import json
import math
import re
from typing import Any, Callable, Mapping, Optional, Sequence

from notify_server.access.auth import MIN_SECRET_LENGTH
from notify_server.redis_io.clients import RedisLocation, sentinel_broker_url
from notify_server.config import (AccessConfig, CeleryConfig, RedisConfig, ServerConfig,
                                  SocketConfig)

# More clock leeway than this would keep an expired token working for long.
MAX_LEEWAY = 30.0


class SettingError(ValueError):
    """A setting's value is not allowed: the message names the variable or
    flag, the value and what is allowed, on one line."""


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    env: str
    parse: Callable[[str], Any]  # raises ValueError saying what is allowed
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


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
    addresses = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        host, _, port = part.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be comma-separated host:port addresses of Redis Sentinels, "
                             "such as 10.0.0.1:26379,10.0.0.2:26379, or empty")
        addresses.append((host.strip("[]"), int(port)))
    return tuple(addresses)


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


def _log_level(value: str) -> str:
    level = value.strip().upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


SETTINGS = (
    Setting("host", "NOTIFY_HOST", _text,
            "address to listen on (localhost binds both 127.0.0.1 and ::1)"),
    Setting("port", "NOTIFY_PORT", _port, "port to listen on"),
    Setting("redis_url", "REDIS_URL", _redis_url,
            "Redis for events; unset starts an embedded redis-server"),
    Setting("redis_sentinels", "NOTIFY_REDIS_SENTINELS", _sentinels,
            "Redis Sentinel addresses (host:port, comma-separated): Redis is the primary they "
            "name, followed through failovers; REDIS_URL then gives only the db and password"),
    Setting("redis_master", "NOTIFY_REDIS_MASTER", _text,
            "name of the master the sentinels watch"),
    Setting("broker_url", "CELERY_BROKER_URL", _broker_url,
            "Celery broker the poller inspects; defaults to the Redis URL"),
    Setting("broker_transport_options", "NOTIFY_BROKER_TRANSPORT_OPTIONS", _json_object,
            "the workers' Celery broker_transport_options as a JSON object (global_keyprefix, "
            "sep, priority_steps, master_name); the poller's own socket timeouts win"),
    Setting("queues", "NOTIFY_QUEUES", _queue_names,
            "queues whose depth queue_status always lists, comma-separated; the workers' "
            "queues are added as found"),
    Setting("prefix", "NOTIFY_PREFIX", _text, "prefix of the Redis keys: PREFIX:events and PREFIX:events:history"),
    Setting("subject_arg", "NOTIFY_SUBJECT_ARG", _identifier,
            "keyword argument that names a task's subject (avid); else the first positional"),
    Setting("poll_interval", "NOTIFY_POLL_INTERVAL", _seconds(0, inclusive=False),
            "seconds between Celery inspect polls"),
    Setting("inspect_timeout", "NOTIFY_INSPECT_TIMEOUT", _seconds(0, inclusive=False),
            "seconds an inspect call waits for worker replies"),
    Setting("discovery_interval", "NOTIFY_DISCOVERY_INTERVAL", _seconds(0, inclusive=False),
            "seconds between polls that wait the full timeout to find new workers"),
    Setting("refresh_delay", "NOTIFY_REFRESH_DELAY", _seconds(0, inclusive=True),
            "debounce before an extra poll after a task event"),
    Setting("max_message_size", "NOTIFY_MAX_MESSAGE_SIZE", _positive_int,
            "largest inbound WebSocket frame in bytes; larger closes with 1009"),
    Setting("max_client_buffer", "NOTIFY_MAX_CLIENT_BUFFER", _positive_int,
            "bytes a client may leave unread before it is closed with 4008 (slow)"),
    Setting("ping_interval", "NOTIFY_PING_INTERVAL", _seconds(0, inclusive=True),
            "seconds between WebSocket pings (0 disables)"),
    Setting("ping_timeout", "NOTIFY_PING_TIMEOUT", _seconds(0, inclusive=False),
            "seconds without a pong before a peer is closed as dead (at most the ping interval)"),
    Setting("shutdown_timeout", "NOTIFY_SHUTDOWN_TIMEOUT", _seconds(0, inclusive=True),
            "seconds SIGTERM waits for clients to close before exiting"),
    Setting("allowed_origins", "NOTIFY_ALLOWED_ORIGINS", _origins,
            "comma-separated Origin values allowed to open a socket; * allows any"),
    Setting("auth_secret", "NOTIFY_AUTH_SECRET", _secrets,
            "HS256 secret(s) for client tokens, comma-separated (any verifies); "
            "unset: open mode, no token needed"),
    Setting("auth_leeway", "NOTIFY_AUTH_LEEWAY", _leeway,
            "seconds of clock skew allowed on a token's exp and nbf (0 to 30)"),
    Setting("owner_arg", "NOTIFY_OWNER_ARG", _identifier,
            "keyword argument that names a task's owner (matched against token owners)"),
    Setting("metrics_token", "NOTIFY_METRICS_TOKEN", lambda value: value.strip(),
            "bearer token /metrics requires; empty leaves /metrics open"),
    Setting("max_connections", "NOTIFY_MAX_CONNECTIONS", _count(0, " (0: no limit)"),
            "open sockets in all; more get 503 before the upgrade"),
    Setting("max_connections_per_ip", "NOTIFY_MAX_CONNECTIONS_PER_IP",
            _count(0, " (0: no limit)"),
            "open sockets per client address; more get 429 before the upgrade"),
    Setting("action_rate", "NOTIFY_ACTION_RATE", _rate,
            "actions a socket may send per second; more get rate_limited"),
    Setting("action_burst", "NOTIFY_ACTION_BURST", _count(1, ""),
            "actions a socket may send at once; this many refused in a row close it with 1008"),
    Setting("max_subscribe", "NOTIFY_MAX_SUBSCRIBE", _count(1, ""),
            "task ids and subjects one subscribe may name"),
    Setting("max_header_size", "NOTIFY_MAX_HEADER_SIZE", _count(1024, " bytes"),
            "largest HTTP request head (request line and headers, the ?token= too)"),
    Setting("header_timeout", "NOTIFY_HEADER_TIMEOUT", _seconds(0, inclusive=False),
            "seconds a client may take to send its request headers (and stay idle on HTTP)"),
    Setting("leader_ttl", "NOTIFY_LEADER_TTL", _seconds(0.3, inclusive=True),
            "seconds the poller lease lasts: of all processes on one Redis, its holder polls "
            "inspect; a dead one is replaced within twice this"),
    Setting("celery_events", "NOTIFY_CELERY_EVENTS", _bool,
            "bridge Celery's own events (workers started with -E) to clients: no worker "
            "hook needed"),
    Setting("enable_events", "NOTIFY_ENABLE_EVENTS", _bool,
            "send Celery's enable_events to all workers every 5 s (for workers started "
            "without -E); turns the bridge on"),
    Setting("history_maxlen", "NOTIFY_HISTORY_MAXLEN", _positive_int,
            "events the history keeps (approximately) when the bridge writes; give workers "
            "the same"),
    Setting("log_level", "NOTIFY_LOG_LEVEL", _log_level, "logging level"),
    Setting("xheaders", "NOTIFY_XHEADERS", _bool,
            "trust X-Real-IP/X-Forwarded-For and X-Forwarded-Proto from a reverse proxy"),
    Setting("demo", "NOTIFY_DEMO", _bool,
            "also start a Celery worker on the demo app and a task producer"),
)


@dataclasses.dataclass(frozen=True)
class Settings:
    host: str = "localhost"
    port: int = 8000
    redis_url: Optional[str] = None
    redis_sentinels: tuple = ()
    redis_master: str = "mymaster"
    broker_url: Optional[str] = None
    broker_transport_options: dict = dataclasses.field(default_factory=dict)
    queues: tuple = ("celery",)
    prefix: str = "notify"
    subject_arg: str = "avid"
    poll_interval: float = 2.0
    inspect_timeout: float = 1.0
    discovery_interval: float = 30.0
    refresh_delay: float = 0.2
    max_message_size: int = 65536
    max_client_buffer: int = 1024 * 1024
    ping_interval: float = 25.0
    ping_timeout: float = 10.0
    shutdown_timeout: float = 5.0
    allowed_origins: tuple = ("*",)
    auth_secret: tuple = ()
    auth_leeway: float = 5.0
    owner_arg: str = "user_id"
    metrics_token: str = ""
    max_connections: int = 10000
    max_connections_per_ip: int = 500
    action_rate: float = 20.0
    action_burst: int = 40
    max_subscribe: int = 1000
    max_header_size: int = 16384
    header_timeout: float = 10.0
    leader_ttl: float = 5.0
    celery_events: bool = False
    enable_events: bool = False
    history_maxlen: int = 10000
    log_level: str = "INFO"
    xheaders: bool = False
    demo: bool = False

    @property
    def events_channel(self) -> str:
        return f"{self.prefix}:events"

    @property
    def history_stream(self) -> str:
        return f"{self.prefix}:events:history"

    @property
    def queue_channel(self) -> str:
        return f"{self.prefix}:queue"

    @property
    def queue_key(self) -> str:
        return f"{self.prefix}:queue:snapshot"

    @property
    def leader_key(self) -> str:
        return f"{self.prefix}:poller:leader"

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
        return ServerConfig(
            redis=RedisConfig(url=self.redis_url, sentinels=self.redis_sentinels,
                              master=self.redis_master if self.redis_sentinels else None,
                              prefix=self.prefix, history_maxlen=self.history_maxlen),
            celery=CeleryConfig(
                broker_url=self.effective_broker_url,
                broker_transport_options=self.broker_transport_options, queues=self.queues,
                subject_arg=self.subject_arg, owner_arg=self.owner_arg,
                poll_interval=self.poll_interval, inspect_timeout=self.inspect_timeout,
                discovery_interval=self.discovery_interval, refresh_delay=self.refresh_delay,
                # Enabling events only makes sense to read them: it turns the bridge on.
                events=self.celery_events or self.enable_events,
                enable_events=self.enable_events),
            sockets=SocketConfig(max_client_buffer=self.max_client_buffer,
                                 ping_interval=self.ping_interval,
                                 ping_timeout=self.ping_timeout),
            access=AccessConfig(
                auth_secrets=self.auth_secret, auth_leeway=self.auth_leeway,
                max_connections=self.max_connections,
                max_connections_per_ip=self.max_connections_per_ip,
                action_rate=self.action_rate, action_burst=self.action_burst,
                max_subscribe=self.max_subscribe),
            leader_ttl=self.leader_ttl, instance=instance)


def build_parser() -> argparse.ArgumentParser:
    """Flags as raw strings (None when absent): `load` parses and checks them,
    so a flag and its variable get the same one-line error."""
    parser = argparse.ArgumentParser(
        prog="run.py", description="Realtime Celery task notifications over WebSocket.")
    for setting in SETTINGS:
        if setting.parse is _bool:
            parser.add_argument(setting.flag, dest=setting.name, default=None,
                                action=argparse.BooleanOptionalAction,
                                help=f"{setting.help} (env {setting.env})")
        else:
            parser.add_argument(setting.flag, dest=setting.name, default=None,
                                help=f"{setting.help} (env {setting.env})")
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
            raise SettingError(f"{source}={raw!r}: {exc}") from None
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
