"""The server's settings: one immutable object, built once and handed down.

Every setting has an environment variable and a command-line flag; the flag wins.
`Settings` holds the defaults; `SETTINGS` names each one's variable, parser and
meaning. The flag parser and the README's configuration table are built from them.
"""

import argparse
import dataclasses
from typing import Any, Callable, Mapping, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    env: str
    parse: Callable[[str], Any]
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _optional_str(value: str) -> Optional[str]:
    return value or None


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _origins(value: str) -> tuple:
    return tuple(part.strip() for part in value.split(",") if part.strip())


SETTINGS = (
    Setting("host", "NOTIFY_HOST", str,
            "address to listen on (localhost binds both 127.0.0.1 and ::1)"),
    Setting("port", "NOTIFY_PORT", int, "port to listen on"),
    Setting("redis_url", "REDIS_URL", _optional_str,
            "Redis for events; unset starts an embedded redis-server"),
    Setting("broker_url", "CELERY_BROKER_URL", _optional_str,
            "Celery broker the poller inspects; defaults to the Redis URL"),
    Setting("prefix", "NOTIFY_PREFIX", str, "prefix of the Redis keys: PREFIX:events and PREFIX:events:history"),
    Setting("subject_arg", "NOTIFY_SUBJECT_ARG", str,
            "keyword argument that names a task's subject (avid); else the first positional"),
    Setting("poll_interval", "NOTIFY_POLL_INTERVAL", float,
            "seconds between Celery inspect polls"),
    Setting("inspect_timeout", "NOTIFY_INSPECT_TIMEOUT", float,
            "seconds an inspect call waits for worker replies"),
    Setting("discovery_interval", "NOTIFY_DISCOVERY_INTERVAL", float,
            "seconds between polls that wait the full timeout to find new workers"),
    Setting("refresh_delay", "NOTIFY_REFRESH_DELAY", float,
            "debounce before an extra poll after a task event"),
    Setting("max_message_size", "NOTIFY_MAX_MESSAGE_SIZE", int,
            "largest inbound WebSocket frame in bytes; larger closes with 1009"),
    Setting("max_client_buffer", "NOTIFY_MAX_CLIENT_BUFFER", int,
            "bytes a client may leave unread before it is closed with 4008 (slow)"),
    Setting("ping_interval", "NOTIFY_PING_INTERVAL", float,
            "seconds between WebSocket pings (0 disables)"),
    Setting("ping_timeout", "NOTIFY_PING_TIMEOUT", float,
            "seconds without a pong before a peer is closed as dead (at most the ping interval)"),
    Setting("shutdown_timeout", "NOTIFY_SHUTDOWN_TIMEOUT", float,
            "seconds SIGTERM waits for clients to close before exiting"),
    Setting("allowed_origins", "NOTIFY_ALLOWED_ORIGINS", _origins,
            "comma-separated Origin values allowed to open a socket; * allows any"),
    Setting("log_level", "NOTIFY_LOG_LEVEL", str, "logging level"),
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
    broker_url: Optional[str] = None
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
    def effective_broker_url(self) -> Optional[str]:
        return self.broker_url or self.redis_url


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run.py", description="Realtime Celery task notifications over WebSocket.")
    defaults = Settings()
    for setting in SETTINGS:
        default = getattr(defaults, setting.name)
        if setting.env in environ:
            try:
                default = setting.parse(environ[setting.env])
            except ValueError as exc:
                parser.error(f"{setting.env}: {exc}")
        if setting.parse is _bool:
            parser.add_argument(setting.flag, dest=setting.name, default=default,
                                action=argparse.BooleanOptionalAction,
                                help=f"{setting.help} (env {setting.env})")
        else:
            parser.add_argument(setting.flag, dest=setting.name, default=default,
                                type=setting.parse, help=f"{setting.help} (env {setting.env})")
    return parser


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Build the settings from flags, then environment variables, then defaults.

    Raises SystemExit with a usage message on a malformed flag or variable.
    """
    namespace = build_parser(environ).parse_args(list(argv))
    return Settings(**vars(namespace))
