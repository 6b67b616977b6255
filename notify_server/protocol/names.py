"""What workers and servers must agree on: Redis key names and shared defaults.

Standard library only: the worker side imports it. A server and its workers
find each other only through these names, so both build them here.
"""

import dataclasses
import hashlib
from typing import Tuple

# Defaults a worker's `install()` and the server's settings share.
DEFAULT_PREFIX = "notify"
DEFAULT_SUBJECT_ARG = "avid"
DEFAULT_OWNER_ARG = "user_id"
DEFAULT_HISTORY_MAXLEN = 10000
DEFAULT_SENTINEL_MASTER = "mymaster"

# Celery inspect's three task lists, as `queue_status` names them.
TASK_LISTS = ("active_tasks", "scheduled_tasks", "reserved_tasks")


def parse_addresses(value: str) -> Tuple[Tuple[str, int], ...]:
    """ "host:port,host:port" (a host may be [IPv6]) as (host, port) pairs, as
    NOTIFY_REDIS_SENTINELS gives them; raises ValueError naming a part of
    another shape."""
    pairs = []
    for part in (p.strip() for p in value.split(",") if p.strip()):
        host, _, port = part.rpartition(":")
        if not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
            raise ValueError(f"{part!r} is not host:port")
        pairs.append((host.strip("[]"), int(port)))
    return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class Keys:
    """The Redis keys and channels under one prefix (docs/protocol.md section 6)."""

    prefix: str = DEFAULT_PREFIX

    @property
    def events_channel(self) -> str:
        """Where each event is published as it is written."""
        return f"{self.prefix}:events"

    @property
    def history_stream(self) -> str:
        """The stream that holds the recent events, with their ids."""
        return f"{self.prefix}:events:history"

    @property
    def queue_channel(self) -> str:
        """Where the poller's leader announces each queue snapshot."""
        return f"{self.prefix}:queue"

    @property
    def queue_key(self) -> str:
        """The latest queue snapshot."""
        return f"{self.prefix}:queue:snapshot"

    @property
    def leader_key(self) -> str:
        """The poller lease: who polls inspect."""
        return f"{self.prefix}:poller:leader"

    def alert_position(self, url: str) -> str:
        """Where the alert sender keeps the stream id up to which the webhook at
        `url` has been served (a string): named by a digest, never by the URL."""
        return f"{self.prefix}:alerts:{hashlib.sha1(url.encode()).hexdigest()[:12]}:position"

    @property
    def once_prefix(self) -> str:
        """Of each lifecycle transition's once-only key (docs/protocol.md 6.4):
        this, then `<task_id>:<type>:<attempt>`."""
        return f"{self.prefix}:once:"

    # -- task records (docs/protocol.md 6.5); the emit script builds the same names

    @property
    def root(self) -> str:
        """What every record key starts with: the prefix and a colon (the
        emit script's PREFIX argument)."""
        return f"{self.prefix}:"

    def record(self, task_id: str) -> str:
        """One task's record (a hash)."""
        return f"{self.prefix}:task:{task_id}"

    def record_events(self, task_id: str) -> str:
        """One task's timeline, a line per event (a string beside its record)."""
        return f"{self.prefix}:task-events:{task_id}"

    @property
    def records_config(self) -> str:
        """The retention and bounds the server hands the emit script (a hash)."""
        return f"{self.prefix}:tasks:config"

    @property
    def all_records(self) -> str:
        """Every record, oldest first (a sorted set of sort keys)."""
        return f"{self.prefix}:tasks:all"

    def status_records(self, status: str, owner: "str | None" = None) -> str:
        """The records whose status is `status` (of one owner, if given)."""
        index = f"{self.prefix}:tasks:status:{status}"
        return index if owner is None else f"{index}:owner:{owner}"

    def owner_records(self, owner: str) -> str:
        """One owner's records."""
        return f"{self.prefix}:tasks:owner:{owner}"

    def minute_counts(self, minute: int) -> str:
        """Tasks completed and failed in one minute (Unix seconds // 60; a hash)."""
        return f"{self.prefix}:tasks:minute:{minute}"
