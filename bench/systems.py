"""The systems under test: how each is started, and its worker-side path.

Each `start` returns (server child, WebSocket URL). The server is the one
process whose CPU and memory are measured (daphne's own PID for the peer).
"""

import dataclasses
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Tuple

from bench.procs import Child, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "bench" / "peers"


@dataclasses.dataclass(frozen=True)
class System:
    name: str
    description: str
    publisher: Tuple[str, ...]          # argv after `-m bench.publisher`; {redis} is replaced
    publisher_env: Dict[str, str]
    start: Callable[..., Tuple[Child, str]]
    path_note: str


# The server's connection and action limits (token-mode commit) would refuse the
# load client's 1,000+ sockets from one address (429) and rate-limit the loop-lag
# probe's ping every 20 ms: the benchmark measures fan-out, not the limits.
NO_LIMITS = {"NOTIFY_MAX_CONNECTIONS": "0", "NOTIFY_MAX_CONNECTIONS_PER_IP": "0",
             "NOTIFY_ACTION_RATE": "1000", "NOTIFY_ACTION_BURST": "1000"}


def _start_ours(redis_url: str, log_dir: Path, tag: str, cpus=None, env=None) -> Tuple[Child, str]:
    port = free_port()
    child = Child(f"{tag}-notify-server", [sys.executable, "run.py", "--host", "127.0.0.1",
                                           "--port", str(port)],
                  log_dir=log_dir, cwd=ROOT, cpus=cpus,
                  env={"REDIS_URL": redis_url, "NOTIFY_LOG_LEVEL": "WARNING", **NO_LIMITS,
                       **(env or {})})
    wait_for_port(child, port)
    return child, f"ws://127.0.0.1:{port}/ws/tasks/"


def _start_base(redis_url: str, log_dir: Path, tag: str, cpus=None, env=None) -> Tuple[Child, str]:
    """This project's server from another checkout ($NOTIFY_BENCH_BASE, e.g. a
    `git archive` of an older commit), for before-and-after in one run."""
    base = os.environ.get("NOTIFY_BENCH_BASE")
    if not base:
        raise SystemExit("notify-server-base: set NOTIFY_BENCH_BASE to a checkout of the server")
    port = free_port()
    child = Child(f"{tag}-notify-server-base", [sys.executable, "run.py", "--host", "127.0.0.1",
                                                "--port", str(port)],
                  log_dir=log_dir, cwd=Path(base), cpus=cpus,
                  env={"REDIS_URL": redis_url, "NOTIFY_LOG_LEVEL": "WARNING", **NO_LIMITS,
                       "PYTHONPATH": base, **(env or {})})
    wait_for_port(child, port)
    return child, f"ws://127.0.0.1:{port}/ws/tasks/"


def _start_baseline(redis_url: str, log_dir: Path, tag: str, cpus=None, env=None) -> Tuple[Child, str]:
    port = free_port()
    child = Child(f"{tag}-tornado-baseline",
                  [sys.executable, str(PEERS / "tornado_baseline.py"), "--port", str(port),
                   "--redis-url", redis_url], log_dir=log_dir, cwd=ROOT, cpus=cpus)
    wait_for_port(child, port)
    return child, f"ws://127.0.0.1:{port}/ws/tasks/"


def _daphne(layer: str):
    def start(redis_url: str, log_dir: Path, tag: str, cpus=None, env=None) -> Tuple[Child, str]:
        port = free_port()
        child = Child(f"{tag}-daphne-{layer}",
                      [str(Path(sys.executable).parent / "daphne"), "-b", "127.0.0.1",
                       "-p", str(port), "-v", "0", "djpeer.asgi:application"],
                      log_dir=log_dir, cwd=PEERS, cpus=cpus,
                      env={"REDIS_URL": redis_url, "BENCH_CHANNEL_LAYER": layer,
                           "DJANGO_SETTINGS_MODULE": "djpeer.settings", "PYTHONPATH": str(PEERS)})
        wait_for_port(child, port)
        return child, f"ws://127.0.0.1:{port}/ws/tasks/"
    return start


def _peer_env(layer: str) -> Dict[str, str]:
    return {"BENCH_CHANNEL_LAYER": layer, "DJANGO_SETTINGS_MODULE": "djpeer.settings",
            "PYTHONPATH": f"{PEERS}:{ROOT}"}


SYSTEMS = {
    "notify-server": System(
        "notify-server", "this project: python run.py (Tornado), one Redis subscription",
        ("lua", "{redis}"), {}, _start_ours,
        "emitter Lua script (XADD + PUBLISH), pipelined redis.asyncio"),
    "notify-server-base": System(
        "notify-server-base", "this project's server from $NOTIFY_BENCH_BASE (an older commit)",
        ("lua", "{redis}"), {}, _start_base,
        "emitter Lua script (XADD + PUBLISH), pipelined redis.asyncio"),
    "channels-core": System(
        "channels-core", "peer: Django 5.2 + Channels 4 + channels_redis RedisChannelLayer, daphne",
        ("group_send",), _peer_env("core"), _daphne("core"),
        "channel_layer.group_send('tasks', ...)"),
    "channels-pubsub": System(
        "channels-pubsub", "peer: as above with RedisPubSubChannelLayer",
        ("group_send",), _peer_env("pubsub"), _daphne("pubsub"),
        "channel_layer.group_send('tasks', ...)"),
    "tornado-baseline": System(
        "tornado-baseline", "baseline: bench/peers/tornado_baseline.py, a bare write_message loop",
        ("lua", "{redis}"), {}, _start_baseline,
        "emitter Lua script (XADD + PUBLISH), pipelined redis.asyncio"),
}
