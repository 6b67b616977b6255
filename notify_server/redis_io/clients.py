"""Where Redis is: one URL, or the primary that Redis Sentinel names.

Every Redis client of the server is made here, so that with Sentinel they all
follow a failover the same way: a connection to the old primary fails, and
the next one asks the sentinels who the primary is now.
"""

import dataclasses
from typing import Any, Optional, Tuple

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from notify_server.worker.emitter import connection_options

# How long asking a sentinel may take.
SENTINEL_TIMEOUT = 1.0


@dataclasses.dataclass(frozen=True)
class RedisLocation:
    """`url` alone (`redis://`, `rediss://`, `unix://`), or `sentinels`
    ((host, port) pairs) and the `master` name they watch; then the URL, when
    given, only supplies the database number and the credentials."""

    url: Optional[str]
    sentinels: Tuple[Tuple[str, int], ...] = ()
    master: Optional[str] = None

    def __post_init__(self) -> None:
        if self.sentinels and not self.master:
            raise ValueError("Redis Sentinel needs the name of the master it watches")
        if not self.sentinels and not self.url:
            raise ValueError("a Redis URL or sentinels are needed")

    def client(self, **options: Any) -> Redis:
        """A redis.asyncio client with `options` (timeouts, retry, ...)."""
        if not self.sentinels:
            return Redis.from_url(self.url, **options)
        connection = self.connection_options()
        sentinel = Sentinel(list(self.sentinels), sentinel_kwargs={
            "socket_timeout": SENTINEL_TIMEOUT, "socket_connect_timeout": SENTINEL_TIMEOUT})
        return sentinel.master_for(self.master, **connection, **options)

    def connection_options(self) -> dict:
        """Database and credentials from the URL, without its host and port."""
        return connection_options(self.url)

    def describe(self) -> str:
        """For logs: the URL without its password, or the sentinels."""
        if self.sentinels:
            hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
            return f"sentinel {self.master} via {hosts}"
        return _without_password(self.url)


def sentinel_broker_url(location: RedisLocation) -> str:
    """kombu's URL for the same Redis behind Sentinel (its transport option
    `master_name` names the master): ``sentinel://h1:p1;sentinel://h2:p2/db``."""
    db = location.connection_options().get("db", 0)
    password = location.connection_options().get("password")
    auth = f":{password}@" if password else ""
    return ";".join(f"sentinel://{auth}{host}:{port}/{db}" for host, port in location.sentinels)


def _without_password(url: Optional[str]) -> str:
    if not url or "@" not in url:
        return url or ""
    scheme, _, rest = url.partition("://")
    credentials, _, host = rest.rpartition("@")
    user = credentials.partition(":")[0]
    return f"{scheme}://{user + ':***' if user else '***'}@{host}"
