"""A Redis Sentinel deployment on loopback: a primary, a replica and three sentinels.

Each is a redis-server child process (sentinels are the same binary run with
`--sentinel`) on an ephemeral 127.0.0.1 port, with its configuration and data
in one private temporary directory and its output in test-artifacts/.
`start` returns once the replica is in sync and every sentinel knows the
replica, the two other sentinels and that a failover can be authorised;
`stop` ends every process it started and removes the directory.
"""

import asyncio
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import redis
import redis.asyncio

from notify_server.dev.embedded_redis import find_redis_server
from tests.support.processes import Child
from tests.support.wsframes import free_port

Address = Tuple[str, int]
HOST = "127.0.0.1"

# A sentinel calls the primary down after this long without an answer.
DOWN_AFTER_MS = 1000

DATA_NODE = """\
port {port}
bind 127.0.0.1
dir {dir}
daemonize no
logfile ""
save ""
appendonly no
repl-diskless-sync yes
repl-diskless-sync-delay 0
# A peer that stops reading keeps its queue: tests make a replica lag on purpose.
client-output-buffer-limit replica 0 0 0
client-output-buffer-limit pubsub 0 0 0
"""

SENTINEL = """\
port {port}
bind 127.0.0.1
dir {dir}
daemonize no
logfile ""
sentinel monitor {master} 127.0.0.1 {primary_port} 2
sentinel down-after-milliseconds {master} {down_after}
sentinel failover-timeout {master} 3000
sentinel parallel-syncs {master} 1
"""


class RedisNode:
    """One redis-server (data node or sentinel) with its config file in `dir`."""

    def __init__(self, name: str, config: str, port: int, directory: Path,
                 sentinel: bool = False):
        self.name, self.port = name, port
        self.config_path = directory / f"{name}.conf"
        # A sentinel rewrites its config file (its id, what it learnt): it must be writable.
        self.config_path.write_text(config)
        argv = [find_redis_server(), str(self.config_path)] + (["--sentinel"] if sentinel else [])
        self.child = Child(f"redis-{name}", argv)

    @property
    def address(self) -> Address:
        return HOST, self.port

    def ask(self, *command):
        """One command's reply, on a connection of its own (decoded strings)."""
        client = redis.Redis(host=HOST, port=self.port, decode_responses=True, socket_timeout=2.0,
                             socket_connect_timeout=1.0)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed, no goodbye to replicas or clients."""
        self.child.signal(signal.SIGKILL)
        self.child.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the process stops reading; the kernel still queues what peers send."""
        self.child.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.child.signal(signal.SIGCONT)

    def stop(self) -> None:
        self.child.stop(timeout=5)


class SentinelCluster:
    """`primary`, `replica` (`replicaof` the primary) and three `sentinel_nodes`
    watching `master` with quorum 2."""

    def __init__(self, master: str = "notify-test"):
        self.master = master
        self.dir = Path(tempfile.mkdtemp(prefix="notify-sentinel-"))
        self.primary: Optional[RedisNode] = None
        self.replica: Optional[RedisNode] = None
        self.sentinel_nodes: List[RedisNode] = []

    @property
    def sentinels(self) -> List[Address]:
        return [node.address for node in self.sentinel_nodes]

    @property
    def sentinels_setting(self) -> str:
        """The sentinels as NOTIFY_REDIS_SENTINELS spells them."""
        return ",".join(f"{host}:{port}" for host, port in self.sentinels)

    def start(self, timeout: float = 30.0) -> "SentinelCluster":
        """Start all five and wait until a failover could happen; raises
        AssertionError naming what was not ready after `timeout` (and stops
        what it started)."""
        deadline = time.monotonic() + timeout
        try:
            primary_port = free_port()
            self.primary = self._data_node("primary", primary_port)
            _wait(lambda: self.primary.ask("PING"), deadline, "the primary answers PING")
            self.replica = self._data_node("replica", free_port(),
                                           f"replicaof 127.0.0.1 {primary_port}\n")
            _wait(self._replica_in_sync, deadline, "the replica is in sync")
            for number in range(3):
                port = free_port()
                config = SENTINEL.format(port=port, dir=self.dir, master=self.master,
                                         primary_port=primary_port, down_after=DOWN_AFTER_MS)
                self.sentinel_nodes.append(
                    RedisNode(f"sentinel{number}-{port}", config, port, self.dir, sentinel=True))
            for node in self.sentinel_nodes:
                _wait(lambda: self._sentinel_ready(node), deadline,
                      f"{node.name} knows the replica and 2 other sentinels, and has quorum")
        except BaseException:
            self.stop()
            raise
        return self

    def _data_node(self, name: str, port: int, extra: str = "") -> RedisNode:
        config = DATA_NODE.format(port=port, dir=self.dir / name) + extra
        (self.dir / name).mkdir()
        return RedisNode(name, config, port, self.dir)

    def _replica_in_sync(self) -> bool:
        info = self.replica.ask("INFO", "replication")  # parsed by redis-py into a dict
        return info.get("master_link_status") == "up" and info.get("master_sync_in_progress") == 0

    def _sentinel_ready(self, node: RedisNode) -> bool:
        try:
            replicas = _records(node.ask("SENTINEL", "REPLICAS", self.master))
            others = _records(node.ask("SENTINEL", "SENTINELS", self.master))
            node.ask("SENTINEL", "CKQUORUM", self.master)
        except redis.ResponseError:  # NOQUORUM and the like: not yet
            return False
        return (len(others) == 2 and len(replicas) == 1 and replicas[0]["flags"] == "slave"
                and replicas[0]["master-link-status"] == "ok")

    def lag_replica(self) -> None:
        """Make the replica fall behind for real: pause it, then write filler
        to the primary until the primary holds replication data the socket
        would not take. Whatever the primary acknowledges from then on, the
        replica never gets if the primary dies first (`kill_primary`)."""
        self.replica.pause()
        self._fill_until_held_back("replica", lambda client, key, filler: client.set(key, filler))

    def lag_subscribers(self, pause: Callable[[], None], channel: str) -> None:
        """The same for a subscriber: `pause()` it (SIGSTOP a server), then
        publish filler on `channel` until the primary holds messages for it
        that its socket would not take."""
        pause()
        self._fill_until_held_back("pubsub", lambda client, key, filler: client.publish(
            channel, filler))

    def _fill_until_held_back(self, client_type: str, write: Callable,
                              chunk: int = 4 * 2**20, limit: int = 256 * 2**20) -> None:
        """`write(client, key, filler)` until one connection of `client_type`
        has output waiting in the primary (`omem`: the kernel's buffers are full)."""
        filler = b"x" * chunk
        client = redis.Redis(host=HOST, port=self.primary.port, socket_timeout=5.0)
        try:
            written = 0
            while self._most_output_waiting(client_type) == 0:
                assert written < limit, f"a paused {client_type} took {written} bytes"
                write(client, f"filler:{written}", filler)
                written += chunk
        finally:
            client.close()

    def _most_output_waiting(self, client_type: str) -> int:
        """The largest `omem` among the primary's connections of `client_type`."""
        listing = self.primary.ask("CLIENT", "LIST", "TYPE", client_type)
        return max((int(field[len("omem="):]) for field in listing.split()
                    if field.startswith("omem=")), default=0)

    def kill_primary(self) -> None:
        """SIGKILL the primary; a replica paused by `lag_replica` is resumed
        right after, and finds its primary gone."""
        self.primary.kill()
        self.replica.resume()

    async def watch_failover(self) -> "FailoverWatch":
        """Subscribe to every sentinel's `+switch-master` (before causing a failover)."""
        watch = FailoverWatch(self.master)
        await watch.subscribe(self.sentinels)
        return watch

    def stop(self) -> None:
        """Stop the sentinels first (so they do not act on the data nodes going away)."""
        for node in [*self.sentinel_nodes, self.replica, self.primary]:
            if node is not None:
                node.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class FailoverWatch:
    """`+switch-master` announcements for one master, from every sentinel."""

    def __init__(self, master: str):
        self._master = master
        self._subscriptions: List[redis.asyncio.client.PubSub] = []
        self._clients: List[redis.asyncio.Redis] = []

    async def subscribe(self, sentinels: List[Address]) -> None:
        for host, port in sentinels:
            client = redis.asyncio.Redis(host=host, port=port, decode_responses=True)
            subscription = client.pubsub(ignore_subscribe_messages=True)
            await subscription.subscribe("+switch-master")
            self._clients.append(client)
            self._subscriptions.append(subscription)

    async def promoted(self, timeout: float) -> Address:
        """The new primary's address, as soon as any sentinel announces it;
        raises AssertionError after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        listeners = [loop.create_task(self._next_switch(s)) for s in self._subscriptions]
        try:
            done, _ = await asyncio.wait(listeners, timeout=max(0.0, deadline - loop.time()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            for listener in listeners:
                listener.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
        if not done:
            raise AssertionError(f"no sentinel announced +switch-master within {timeout} s")
        return next(iter(done)).result()

    async def _next_switch(self, subscription) -> Address:
        while True:
            message = await subscription.get_message(timeout=1.0)
            if message is None:
                continue
            # "<master> <old ip> <old port> <new ip> <new port>"
            name, _, _, host, port = message["data"].split()
            if name == self._master:
                return host, int(port)

    async def close(self) -> None:
        for subscription in self._subscriptions:
            await subscription.aclose()
        for client in self._clients:
            await client.aclose()


def _records(reply: list) -> List[Dict[str, str]]:
    """SENTINEL REPLICAS / SENTINELS replies as dicts (redis-py makes dicts of
    some replies, depending on the version and protocol; the rest are flat
    key, value lists)."""
    return [record if isinstance(record, dict) else dict(zip(record[::2], record[1::2]))
            for record in reply]


def _wait(ready: Callable[[], bool], deadline: float, what: str) -> None:
    """Poll `ready` (connection errors count as not ready) until `deadline`."""
    while True:
        try:
            if ready():
                return
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"sentinel cluster: timed out waiting until {what}")
        time.sleep(0.05)
