"""The Celery event bridge under load: what it adds to the server's CPU and
event-loop lag at `--rate` Celery task events per second.

    bench/.venv/bin/python -m bench.bridge [--rate 200] [--clients 1000] [--seconds 20]
                                          [--rounds 3] [--md bench/RESULTS-bridge.md] [--pin]

The goal (the issue): "the bridge at 200 task events/s adds less than 10 %
server CPU and no loop lag beyond the current figures".

The source of Celery events is a child process of this step (`source`, below),
not a Celery worker (a real worker would take the two cores): it sends
Celery's own events with Celery's `EventDispatcher` on the Redis broker, paced
evenly at `--rate`: for each task a `task-received` (uuid, name, args and
kwargs reprs such as "['A-123']" and "{'user_id': 'u1'}", retries 0), a
`task-started` and a `task-succeeded` (result repr, runtime), from one of
three fake worker hostnames; and, all the time, a `worker-heartbeat` from each
hostname every 2 s (`worker-online` first). Its CPU is counted on its own.

Three cases, each with a fresh server process (`python run.py`) on the same
Redis, which is also the broker; `--clients` sockets from one load-client
process; the source sending in every case:

A. bridge off: the server ignores the Celery events (the baseline);
B. bridge on (`--celery-events`): its helper process maps every task event to
   a protocol event and writes it (the emitter's Lua script, with the
   transition's once-only key); the server relays it to every socket;
C. bridge off, the hook path: bench.publisher writes as many protocol events
   per second through the emitter's Lua script as B's bridge writes (one per
   Celery task event), and the server relays them to every socket.

So B - A is what turning the bridge on costs with the deliveries it causes,
and B - C what the bridge costs beyond delivering the same events the way a
worker hook would.

Per case: connect the sockets, a second of events to warm up, then an idle
window (`--idle` s: sockets open, heartbeats only), the load window
(`--seconds` of task events, then waiting for the last deliveries, to a fixed
length) and a second idle window. CPU (user + system, psutil) over each window
of the server process and of each of its descendants by role (the bridge
helper: the one holding the broker's pattern subscription; multiprocessing's
resource tracker; the inspect helper: the rest), of Redis, the source, the
publisher and the load client. *Net*: the load window's CPU less the idle
windows' mean rate over the same time. Loop lag: the server's
`notify_event_loop_lag_seconds` histogram, its buckets' change over the load
window (p99 interpolated as PromQL does, and the highest bucket reached).
Every server: NOTIFY_LOG_LEVEL=WARNING, connection and action limits off
(bench.systems), WebSocket pings off (NOTIFY_PING_INTERVAL=0: no ping round
falls into one window and not another).

The cases run `--rounds` times, every other round in reverse order; each
round's differences are taken within the round, and the headline is their
median.

Checked, in B and C: every socket got every event exactly once and in order
(none lost, duplicated or out of range; no socket dropped); in B the bridge
wrote one protocol event per task event and found no duplicate; in A no task
event reached a socket; the source kept its rate. The server's log is scanned
for warnings and errors.

Writes bench/out/bridge/bridge.json (or `--json`) and the Markdown (`--md`);
exits 1 when a check fails. Every child is stopped by PID. Loopback only.

Also the two child roles of this step (one file, so the step is one module):

    python -m bench.bridge source BROKER_URL   # the Celery event source
    python -m bench.bridge client              # bench.loadclient reading bridged frames
"""

import argparse
import asyncio
import concurrent.futures
import datetime
import json
import math
import os
import platform
import re
import signal
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import psutil
import redis

from bench import procs
from bench.main import LAG_METRIC, git_state, raise_fd_limit
from bench.multiproc import display_path, machine_busy, readyz, tree_cpu
from bench.procs import Child, RpcChild, free_port, serve_commands, wait_for_port
from bench.stats import (histogram_delta, histogram_quantile, parse_prometheus_histogram,
                         scan_seq)
from bench.systems import NO_LIMITS, ROOT
from notify_server.protocol.names import Keys
from notify_server.dev.embedded_redis import EmbeddedRedis

BENCH = ROOT / "bench"
OUT = BENCH / "out" / "bridge"
PER_SOURCE = 5000          # sockets per loopback source address (ephemeral ports)
# What `python run.py` runs: copied once per run, so that every case runs the
# same code even while the working tree is being edited.
SERVER_CODE = ("run.py", "settings.py", "handlers", "notify_server")
GOAL_SHARE = 0.10          # "adds less than 10 % server CPU"

CASES = {
    "A": {"label": "bridge off, Celery events ignored", "bridge": False, "hook": False},
    "B": {"label": "bridge on", "bridge": True, "hook": False},
    "C": {"label": "bridge off, hook path (bench.publisher)", "bridge": False, "hook": True},
}

# -- the synthetic Celery events -----------------------------------------------------

# Task n's id: a UUID whose last 12 hex digits are n, so the load client can
# tell which event a bridged frame is (event 3n + step) without parsing JSON.
TASK_ID_PREFIX = "b1d9e0c4-5e6f-4a8b-9c0d-"
TASK_NAME = "reports.tasks.process_file"
WORKERS = ("celery@bench-worker-1", "celery@bench-worker-2", "celery@bench-worker-3")
HEARTBEAT_INTERVAL = 2.0   # Celery's default worker heartbeat
OWNERS = 50


def task_id(task: int) -> str:
    return f"{TASK_ID_PREFIX}{task:012x}"


def task_event(task: int, step: int) -> tuple:
    """(Celery event type, fields) of step 0, 1 or 2 of task `task`, with the
    fields a Celery 5 worker sends (the dispatcher adds hostname, timestamp,
    clock, pid, utcoffset)."""
    uuid = task_id(task)
    if step == 0:
        return "task-received", {"uuid": uuid, "name": TASK_NAME, "args": f"['A-{task}']",
                                 "kwargs": f"{{'user_id': 'u{task % OWNERS}'}}",
                                 "root_id": uuid, "parent_id": None, "retries": 0,
                                 "eta": None, "expires": None}
    if step == 1:
        return "task-started", {"uuid": uuid}
    return "task-succeeded", {"uuid": uuid, "result": f"'A-{task} done'", "runtime": 0.0123}


class CelerySource:
    """Fake workers' Celery events on the broker: heartbeats all the time (a
    thread with its own connection), task events on request (`run`).

    `run` is called from one thread at a time; `stop` sends `worker-offline`."""

    def __init__(self, broker_url: str):
        from celery import Celery
        self.app = Celery("bench-celery-source", broker=broker_url, set_as_current=False)
        self.processed = 0
        self._stopped = threading.Event()
        self._beating = threading.Thread(target=self._beat, name="heartbeats", daemon=True)
        self._beating.start()
        self._connection = self.app.connection_for_write()
        self._dispatchers = [self.app.events.Dispatcher(self._connection, hostname=name)
                             for name in WORKERS]

    def _worker_fields(self) -> dict:
        import celery
        return {"freq": HEARTBEAT_INTERVAL, "sw_ident": "py-celery", "sw_ver": celery.__version__,
                "sw_sys": platform.system(), "active": 0, "processed": self.processed,
                "loadavg": [round(n, 2) for n in os.getloadavg()]}

    def _beat(self) -> None:
        with self.app.connection_for_write() as connection:
            dispatchers = [self.app.events.Dispatcher(connection, hostname=name)
                           for name in WORKERS]
            for dispatcher in dispatchers:
                dispatcher.send("worker-online", **self._worker_fields())
            while not self._stopped.wait(HEARTBEAT_INTERVAL):
                for dispatcher in dispatchers:
                    dispatcher.send("worker-heartbeat", **self._worker_fields())
            for dispatcher in dispatchers:
                dispatcher.send("worker-offline", **self._worker_fields())

    def run(self, first_task: int, tasks: int, rate: float) -> dict:
        """Send the 3 events of tasks `first_task ..`, event i due at i/rate s;
        returns the achieved rate, the worst lag behind schedule, the CPU used
        and each event's send time (time.monotonic(), just before it is sent)."""
        count = 3 * tasks
        cpu_before = psutil.Process().cpu_times()
        sent_at, worst = [], 0.0
        started = time.monotonic()
        for i in range(count):
            due = started + i / rate
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
                now = time.monotonic()
            worst = max(worst, now - due)
            task, step = divmod(i, 3)
            task += first_task
            kind, fields = task_event(task, step)
            sent_at.append(now)
            self._dispatchers[task % len(WORKERS)].send(kind, **fields)
            if step == 2:
                self.processed += 1
        elapsed = time.monotonic() - started
        cpu_after = psutil.Process().cpu_times()
        return {"sent": count, "seconds": round(elapsed, 3), "target_rate": rate,
                "achieved_rate": round((count - 1) / elapsed, 2) if count > 1 else rate,
                "worst_lag_ms": round(worst * 1000, 2),
                "source_cpu_s": round(cpu_after.user + cpu_after.system
                                      - cpu_before.user - cpu_before.system, 3),
                "sent_at": sent_at}

    def stop(self) -> None:
        self._stopped.set()
        self._beating.join(timeout=5)
        self._connection.release()


async def source_main(broker_url: str) -> None:
    source = CelerySource(broker_url)

    async def handle(command: dict) -> dict:
        name = command.pop("cmd")
        if name != "run":
            raise ValueError(f"unknown command {name!r}")
        return await asyncio.to_thread(source.run, **command)

    try:
        await serve_commands(handle)
    finally:
        source.stop()


# -- the load client: bench.loadclient, reading bridged frames too -------------------

TYPE_PREFIX = b'{"type":"task_'
STEP_OF_TYPE = {b"rec": 0, b"sta": 1, b"com": 2}  # task_received, _started, _completed
TASK_ID_KEY = b'"task_id":"' + TASK_ID_PREFIX.encode()


def event_index(frame: bytes) -> int:
    """The step's event number of a frame: 3n + step for a bridged event of
    task n (its type and id, as the server frames it: type first), else the
    `"seq"` of a bench.publisher event, else -1."""
    if frame.startswith(TYPE_PREFIX):
        step = STEP_OF_TYPE.get(frame[len(TYPE_PREFIX):len(TYPE_PREFIX) + 3])
        at = frame.find(TASK_ID_KEY)
        if step is not None and at >= 0:
            start = at + len(TASK_ID_KEY)
            try:
                return 3 * int(frame[start:start + 12], 16) + step
            except ValueError:
                return -1
    return scan_seq(frame)


def client_main() -> None:
    """bench.loadclient with two changes: its recorder numbers bridged frames
    with `event_index` (they carry no "seq"), and a `sent {base, times}`
    command gives it their send times (they carry no "t"), before `report`."""
    import uvloop

    from bench import loadclient

    loadclient.scan_seq = event_index  # the recorder's one frame scan

    class BridgeLoadClient(loadclient.LoadClient):
        async def handle(self, command: dict) -> dict:
            if command.get("cmd") != "sent":
                return await super().handle(command)
            recorder = loadclient.RECORDER
            for offset, at in enumerate(command["times"]):
                index = command["base"] + offset - recorder.base
                if 0 <= index < recorder.count:
                    recorder.sent[index] = at
            return {"ok": True}

    async def serve() -> None:
        loadclient.raise_fd_limit()
        load = BridgeLoadClient()
        await serve_commands(load.handle)
        load.close()

    uvloop.run(serve())


# -- the orchestrator ------------------------------------------------------------------

def log(message: str) -> None:
    print(message, flush=True)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def snapshot_server_code(into: Path) -> dict:
    """Copy the server's code from the working tree to `into`; returns a
    digest of it and the files that differ from the commit."""
    import shutil
    import subprocess
    for name in SERVER_CODE:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            into.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    changed = subprocess.run(["git", "status", "--porcelain", "--", *SERVER_CODE], cwd=ROOT,
                             capture_output=True, text=True, timeout=10).stdout.splitlines()
    return {"path": display_path(into), "sha256": code_digest(into),
            "uncommitted": sorted(line[3:] for line in changed)}


def code_digest(root: Path) -> str:
    """A digest of the server's code under `root` (file names and contents)."""
    import hashlib
    digest = hashlib.sha256()
    for name in SERVER_CODE:
        path = root / name
        files = sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts) \
            if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


def scrape(port: int) -> dict:
    """The server's loop-lag histogram and bridge counters from GET /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    bridge = {match[1]: float(match[2]) for match in re.finditer(
        r'^notify_bridge_events_total\{outcome="(\w+)"\} (\S+)$', text, flags=re.M)}
    return {"lag": parse_prometheus_histogram(text, LAG_METRIC), "bridge": bridge}


def lag_figures(before: Optional[dict], after: Optional[dict]) -> Optional[dict]:
    """p99 (interpolated), mean and the highest bucket reached, in ms, of the
    observations between two scrapes."""
    if after is None:
        return None
    delta = histogram_delta(before, after)
    count = delta["count"]
    if not count:
        return {"observations": 0}
    p99 = histogram_quantile(delta["buckets"], 0.99)
    top = next(bound for bound, cumulative in delta["buckets"] if cumulative >= count)
    return {"observations": int(count), "p99_ms": round(p99 * 1000, 2),
            "mean_ms": round(delta["sum"] / count * 1000, 3),
            "max_bucket_ms": None if math.isinf(top) else round(top * 1000, 1)}


def descendant_roles(server: psutil.Process, broker: redis.Redis) -> Dict[int, str]:
    """The server's descendants by role. The bridge helper is the one whose
    broker connection holds a pattern subscription (kombu's consumer of
    Celery's event exchange); the resource tracker says so on its command
    line; the other one is the inspect helper."""
    patterns = {int(client["addr"].rsplit(":", 1)[1]) for client in broker.client_list()
                if int(client.get("psub", 0))}
    roles = {}
    for child in server.children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            ports = {c.laddr.port for c in child.net_connections("tcp") if c.laddr}
        except psutil.Error:
            continue
        if "resource_tracker" in command:
            roles[child.pid] = "tracker"
        elif ports & patterns:
            roles[child.pid] = "bridge"
        else:
            roles[child.pid] = "inspect"
    return roles


ROLES = ("server", "bridge", "inspect", "tracker", "other")
OTHERS = ("redis", "source", "publisher", "client")


class BridgeBench:
    def __init__(self, args):
        self.args = args
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_dir = OUT / f"logs-{stamp}"
        self.code_dir = OUT / f"code-{stamp}"
        pin = args.pin and (os.cpu_count() or 1) >= 2
        self.server_cpus = {0} if pin else None
        self.helper_cpus = {1} if pin else None
        self.tasks = max(2, round(args.rate * args.seconds / 3))
        self.events = 3 * self.tasks
        self.window = args.window or float(math.ceil((self.events - 1) / args.rate + args.tail))
        self.next_task = 0
        self.next_source = 2
        self.redis: Optional[EmbeddedRedis] = None
        self.children: List[procs.Child] = []
        self.server: Optional[procs.Child] = None
        self.roles: Dict[int, str] = {}

    # -- processes -------------------------------------------------------------------

    def child(self, name: str, *argv: str) -> RpcChild:
        child = RpcChild(name, [sys.executable, "-m", *argv], log_dir=self.log_dir, cwd=ROOT,
                         cpus=self.helper_cpus)
        self.children.append(child)
        return child

    def sources(self, count: int) -> List[str]:
        """Loopback source addresses of its own for `count` sockets (a fresh range
        per case: no 4-tuple in TIME_WAIT from a previous case is reused)."""
        first, self.next_source = (self.next_source,
                                   self.next_source + max(1, math.ceil(count / PER_SOURCE)))
        return [f"127.0.0.{n}" for n in range(first, self.next_source)]

    def start_server(self, spec: dict, tag: str) -> str:
        """A fresh server from the run's copy of the code (as bench.systems
        starts it: `run.py` on a free loopback port, limits off); returns its
        WebSocket URL."""
        self.port = free_port()
        self.server = Child(f"{tag}-notify-server",
                            [sys.executable, str(self.code_dir / "run.py"), "--host", "127.0.0.1",
                             "--port", str(self.port)],
                            log_dir=self.log_dir, cwd=self.code_dir, cpus=self.server_cpus,
                            env={"REDIS_URL": self.redis.url, **NO_LIMITS,
                                 **self.server_env(spec)})
        try:
            wait_for_port(self.server, self.port)
        except RuntimeError:
            self.server.stop(grace=5.0)
            self.server = None
            raise
        return f"ws://127.0.0.1:{self.port}/ws/tasks/"

    def server_env(self, spec: dict) -> dict:
        env = {"NOTIFY_LOG_LEVEL": "WARNING", "NOTIFY_PING_INTERVAL": "0"}
        if spec["bridge"]:
            env["NOTIFY_CELERY_EVENTS"] = "1"
        return env

    def close(self) -> None:
        if self.server is not None:
            self.server.stop(grace=15.0)
            self.server = None
        for child in reversed(self.children):
            child.stop(grace=10.0)
        self.children = []
        procs.stop_all()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    # -- the step --------------------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        code = snapshot_server_code(self.code_dir)
        self.redis = EmbeddedRedis()
        self.redis.start()
        if self.helper_cpus:
            os.sched_setaffinity(self.redis.process.pid, self.helper_cpus)
        self.redis_ps = psutil.Process(self.redis.process.pid)
        self.broker = redis.Redis.from_url(self.redis.url, decode_responses=True)
        self.client = self.child("bridge-loadclient", "bench.bridge", "client")
        self.source = self.child("bridge-source", "bench.bridge", "source", self.redis.url)
        self.publisher = self.child("bridge-publisher", "bench.publisher", "lua", self.redis.url)
        result = {"meta": {**self.meta(), "server_code": code}, "config": {
            "clients": args.clients, "rate": args.rate, "tasks_per_window": self.tasks,
            "events_per_window": self.events, "window_s": self.window, "idle_s": args.idle,
            "rounds": args.rounds, "workers": list(WORKERS),
            "heartbeat_interval_s": HEARTBEAT_INTERVAL,
            "server_env": {**NO_LIMITS, **self.server_env(CASES["A"])},
            "bridge_env": {"NOTIFY_CELERY_EVENTS": "1"},
            "json": display_path(args.json), "md": display_path(args.md)}, "rounds": []}
        for index in range(args.rounds):
            order = list(CASES) if index % 2 == 0 else list(reversed(CASES))
            this = {"round": index + 1, "order": order, "cases": {}}
            result["rounds"].append(this)
            for name in order:
                log(f"-- round {index + 1}, case {name}: {CASES[name]['label']}")
                try:
                    this["cases"][name] = self.case(name, f"r{index + 1}-{name}")
                except Exception as exc:  # one failed case must not lose the others' figures
                    log(f"   failed: {type(exc).__name__}: {exc}")
                    this["cases"][name] = {"label": CASES[name]["label"],
                                           "error": f"{type(exc).__name__}: {exc}"}
                self.save(result)
        summarise(result)
        result["meta"]["server_code"]["working_tree_changed_during_run"] = (
            code_digest(ROOT) != code["sha256"])
        result["meta"]["load_average_at_end"] = [round(n, 2) for n in os.getloadavg()]
        result["meta"]["finished"] = now_iso()
        return result

    def save(self, result: dict) -> None:
        self.args.json.parent.mkdir(parents=True, exist_ok=True)
        self.args.json.write_text(json.dumps(result, indent=1))

    def case(self, name: str, tag: str) -> dict:
        args, spec = self.args, CASES[name]
        self.broker.flushall()
        url = self.start_server(spec, tag)
        try:
            time.sleep(1.0)
            connect = self.connect(url)
            log(f"   connected {connect['connected']:,}/{args.clients:,} in "
                f"{connect['seconds']} s")
            if connect["connected"] < args.clients:
                raise RuntimeError(f"only {connect['connected']} of {args.clients} connected")
            warm = self.drive(spec, max(1, round(args.rate / 3)))
            self.roles = {}
            idle_before = self.idle_window()
            load = self.load_window(spec)
            idle_after = self.idle_window()
            health = readyz(self.port)  # not earlier: 503 (logged) until the first inspect poll
            outcome = {"label": spec["label"], "server_pid": self.server.pid,
                       "connect": connect, "readyz": health, "warm_up": warm,
                       "roles": {str(pid): role for pid, role in self.roles.items()},
                       "idle_windows": [idle_before, idle_after], "window": load}
            net(outcome)
            outcome["server_alive"] = self.server.alive()
        finally:
            try:
                self.client.call("close", timeout=60)
            except (RuntimeError, TimeoutError, OSError) as exc:
                log(f"   closing the sockets failed: {exc}")
            time.sleep(0.5)
            self.server.stop(grace=15.0)
            log_path = self.server.log_path
            self.server = None
        outcome["server_log"] = server_log(log_path)
        check(outcome, spec, self.events, args.clients, args.rate)
        log(f"   {brief(outcome)}")
        if not outcome["checks_passed"]:
            log(f"   checks failed: {[k for k, v in outcome['checks'].items() if not v]}")
        return outcome

    def connect(self, url: str) -> dict:
        args = self.args
        # One throw-away socket first: any lazy start-up cost is paid before measuring.
        self.client.call("connect", timeout=60, url=url, count=1, deadline_s=30.0)
        self.client.call("close", timeout=60)
        time.sleep(0.5)
        return self.client.call("connect", timeout=args.connect_timeout + 30, url=url,
                                count=args.clients, concurrency=200,
                                sources=self.sources(args.clients),
                                deadline_s=args.connect_timeout)

    def drive(self, spec: dict, tasks: int, until: Optional[float] = None) -> dict:
        """Send `tasks` tasks' events (and in C as many through the publisher),
        then wait for their deliveries (until `until`, a monotonic time).
        Returns the senders' and the load client's replies."""
        args = self.args
        first, self.next_task = self.next_task, self.next_task + tasks
        base, count = 3 * first, 3 * tasks
        delivers = spec["bridge"] or spec["hook"]
        self.client.call("drain", timeout=30, quiet=0.5, timeout_s=10.0)
        self.client.call("begin", timeout=30, base=base, count=count)
        jobs = {"source": (self.source, {"first_task": first, "tasks": tasks,
                                         "rate": args.rate})}
        if spec["hook"]:
            jobs["publisher"] = (self.publisher, {"base": base, "count": count,
                                                  "rate": args.rate})
        started = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
            calls = {key: pool.submit(child.call, "run", timeout=count / args.rate * 4 + 60,
                                      **arguments)
                     for key, (child, arguments) in jobs.items()}
            sent = {key: call.result() for key, call in calls.items()}
        left = max(3.0, (until or started + count / args.rate + args.tail) - time.monotonic())
        waited = (self.client.call("wait", timeout=left + 60, total=count * args.clients,
                                   timeout_s=left, quiet=3.0) if delivers else None)
        times = sent["source"].pop("sent_at")
        if spec["bridge"]:
            self.client.call("sent", timeout=60, base=base, times=times)
        return {"base": base, "count": count, "sent": sent, "waited": waited}

    def readings(self) -> dict:
        for pid in (p.pid for p in self.server.ps.children(recursive=True)):
            if pid not in self.roles:
                self.roles.update(descendant_roles(self.server.ps, self.broker))
                break
        return {"server": tree_cpu(self.server.ps), "redis": tree_cpu(self.redis_ps),
                "source": tree_cpu(self.source.ps), "publisher": tree_cpu(self.publisher.ps),
                "client": tree_cpu(self.client.ps), "machine": psutil.cpu_times(),
                "metrics": scrape(self.port), "at": time.monotonic()}

    def usage(self, before: dict, after: dict) -> dict:
        """CPU seconds by role over a window; lag and bridge counters."""
        cpu = dict.fromkeys(ROLES, 0.0)
        for pid, value in after["server"].items():
            role = ("server" if pid == self.server.pid
                    else self.roles.get(pid, "other"))
            cpu[role] += value - before["server"].get(pid, 0.0)
        for key in OTHERS:
            cpu[key] = sum(value - before[key].get(pid, 0.0) for pid, value in after[key].items())
        cpu["server_tree"] = sum(cpu[role] for role in ROLES)
        counters = {key: value - before["metrics"]["bridge"].get(key, 0.0)
                    for key, value in after["metrics"]["bridge"].items()}
        return {"elapsed_s": round(after["at"] - before["at"], 3),
                "cpu_s": {key: round(value, 4) for key, value in cpu.items()},
                "lag": lag_figures(before["metrics"]["lag"], after["metrics"]["lag"]),
                "bridge_counters": counters,
                "machine_busy": machine_busy(before["machine"], after["machine"])}

    def idle_window(self) -> dict:
        self.client.call("drain", timeout=30, quiet=0.5, timeout_s=10.0)
        before = self.readings()
        time.sleep(self.args.idle)
        return self.usage(before, self.readings())

    def load_window(self, spec: dict) -> dict:
        self.client.call("drain", timeout=30, quiet=0.5, timeout_s=10.0)
        load = os.getloadavg()[0]
        before = self.readings()
        end = before["at"] + self.window
        driven = self.drive(spec, self.tasks, until=end)
        rest = end - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        window = self.usage(before, self.readings())
        window.update(driven, overran=window["elapsed_s"] > self.window + 0.5,
                      report=self.client.call("report", timeout=60),
                      load_average_1m_before=round(load, 2),
                      load_average_1m_after=round(os.getloadavg()[0], 2))
        if spec["bridge"] or spec["hook"]:
            window["frame_bytes"] = frame_bytes(self.broker)
        return window

    def meta(self) -> dict:
        from importlib import metadata
        return {"git": git_state(), "started": now_iso(),
                "command": " ".join(["bench/.venv/bin/python -m bench.bridge", *sys.argv[1:]]),
                "args": {key: str(value) if isinstance(value, Path) else value
                         for key, value in vars(self.args).items()},
                "load_average_at_start": [round(n, 2) for n in os.getloadavg()],
                "cpus": os.cpu_count(), "python": platform.python_version(),
                "packages": {name: metadata.version(name)
                             for name in ("tornado", "redis", "celery", "kombu", "picows")},
                "pinning": ({"server_and_its_helpers": sorted(self.server_cpus),
                             "redis_source_publisher_client": sorted(self.helper_cpus)}
                            if self.server_cpus else None)}


def frame_bytes(broker: redis.Redis) -> Optional[float]:
    """The mean size of the last 100 task events' frames, as the server frames
    them from the history (type, data and id; no owner)."""
    from notify_server.protocol.messages import parse_event
    entries = broker.xrevrange(Keys().history_stream, count=100)
    sizes = [len(parse_event(fields["event"].encode(), entry_id).frame)
             for entry_id, fields in entries if '"task_' in fields["event"]]
    return round(sum(sizes) / len(sizes), 1) if sizes else None


KNOWN_WARNINGS = ("no Celery worker answered the inspect poll",)


def server_log(path: Path) -> dict:
    """The server's (and its helpers') log lines: expected warnings counted,
    everything else kept (up to 30 lines)."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return {"unreadable": str(path)}
    lines = [line for line in lines if not line.startswith("notify-server listening")]
    known = sum(1 for line in lines if any(text in line for text in KNOWN_WARNINGS))
    other = [line for line in lines if not any(text in line for text in KNOWN_WARNINGS)]
    return {"path": display_path(path), "known_warnings": known, "lines": len(other),
            "excerpt": other[:30]}


def net(outcome: dict) -> None:
    """Per role: the load window's CPU as a share of one core, gross and less
    the idle windows' mean rate."""
    window, idle = outcome["window"], outcome["idle_windows"]
    elapsed = window["elapsed_s"]
    idle_s = sum(i["elapsed_s"] for i in idle)
    figures = {}
    for key, gross in window["cpu_s"].items():
        rate = sum(i["cpu_s"][key] for i in idle) / idle_s
        figures[key] = {"cpu_s": round(gross, 3),
                        "core_pct": round(gross / elapsed * 100, 2),
                        "idle_core_pct": round(rate * 100, 2),
                        "net_core_pct": round((gross / elapsed - rate) * 100, 2)}
    outcome["cpu"] = figures


def check(outcome: dict, spec: dict, events: int, clients: int, rate: float) -> None:
    if "window" not in outcome:
        outcome.update(checks={"ran": False}, checks_passed=False)
        return
    window = outcome["window"]
    report, source = window["report"], window["sent"]["source"]
    checks = {"all_connected": outcome["connect"]["connected"] == clients,
              "server_counts_every_socket": outcome["readyz"].get("clients") == clients,
              "no_socket_dropped": report["disconnected_total"] == 0,
              "source_kept_rate": source["achieved_rate"] >= 0.98 * rate,
              "server_alive": outcome["server_alive"],
              "window_not_overrun": not window["overran"]}
    if spec["bridge"] or spec["hook"]:
        checks.update(no_loss=report["lost"] == 0, no_duplicate=report["duplicated"] == 0,
                      no_out_of_range_frame=report["stale_frames"] == 0,
                      every_event_to_every_socket=report["events_complete"] == events)
    else:
        checks["no_task_frame"] = report["deliveries"] + report["stale_frames"] == 0
    if spec["bridge"]:
        counters = window["bridge_counters"]
        # One protocol event per task event; the worker events (online/offline) are not in
        # the window: the workers have been online since the warm-up.
        checks["bridge_wrote_each_once"] = (counters.get("written", 0) == events
                                            and counters.get("duplicates", 0) == 0)
    if spec["hook"]:
        checks["publisher_kept_rate"] = (window["sent"]["publisher"]["achieved_rate"]
                                         >= 0.98 * rate)
    outcome["checks"] = checks
    outcome["checks_passed"] = all(checks.values())


# -- summary ---------------------------------------------------------------------------

def median(values) -> Optional[float]:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    middle = values[(len(values) - 1) // 2:len(values) // 2 + 1]
    return round(sum(middle) / len(middle), 3)


def figures_of(case: dict) -> dict:
    """The figures a case is summed up by (shares of one core, in %)."""
    cpu, window = case["cpu"], case["window"]
    last = window["report"]["latency_last_client"]
    lag = window["lag"] or {}
    idle_lag = [(i["lag"] or {}).get("p99_ms") for i in case["idle_windows"]]
    return {"tree": cpu["server_tree"]["core_pct"], "tree_net": cpu["server_tree"]["net_core_pct"],
            "server": cpu["server"]["core_pct"], "bridge": cpu["bridge"]["core_pct"],
            "bridge_net": cpu["bridge"]["net_core_pct"], "inspect": cpu["inspect"]["core_pct"],
            "redis": cpu["redis"]["core_pct"], "source": cpu["source"]["core_pct"],
            "publisher": cpu["publisher"]["core_pct"], "client": cpu["client"]["core_pct"],
            "lag_p99_ms": lag.get("p99_ms"), "lag_max_bucket_ms": lag.get("max_bucket_ms"),
            "lag_mean_ms": lag.get("mean_ms"), "idle_lag_p99_ms": max(
                (v for v in idle_lag if v is not None), default=None),
            "p50_ms": last["p50_ms"], "p99_ms": last["p99_ms"],
            "busy": None if window["machine_busy"] is None else window["machine_busy"] * 100}


def summarise(result: dict) -> None:
    """Per case the medians over the rounds; per round the differences B - A,
    B - C and C - A (within the round), and their medians."""
    by_case: Dict[str, List[dict]] = {}
    for this in result["rounds"]:
        for name, case in this["cases"].items():
            if "error" not in case:
                case["figures"] = figures_of(case)
                by_case.setdefault(name, []).append(case["figures"])
    result["medians"] = {name: {key: median(f[key] for f in cases) for key in cases[0]}
                         for name, cases in sorted(by_case.items())}
    differences = []
    for this in result["rounds"]:
        cases = {name: c["figures"] for name, c in this["cases"].items() if "figures" in c}
        row = {"round": this["round"]}
        for key, (a, b) in {"B_minus_A": ("A", "B"), "B_minus_C": ("C", "B"),
                            "C_minus_A": ("A", "C")}.items():
            if a in cases and b in cases:
                base, other = cases[a], cases[b]
                row[key] = {"tree_pp": round(other["tree"] - base["tree"], 2),
                            "server_pp": round(other["server"] - base["server"], 2),
                            "tree_rel": round((other["tree"] - base["tree"]) / base["tree"], 4)
                            if base["tree"] else None,
                            "redis_pp": round(other["redis"] - base["redis"], 2)}
        differences.append(row)
    result["differences"] = differences
    result["headline"] = {key: {field: median(row[key][field] for row in differences
                                              if key in row)
                                for field in ("tree_pp", "server_pp", "tree_rel", "redis_pp")}
                          for key in ("B_minus_A", "B_minus_C", "C_minus_A")}
    outcomes = [case for this in result["rounds"] for case in this["cases"].values()]
    result["checks_passed"] = bool(outcomes) and all(c.get("checks_passed") for c in outcomes)


# -- output ----------------------------------------------------------------------------

def _f(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}" if isinstance(value, float) else f"{value:,}{suffix}"


def _pct(value, digits: int = 1) -> str:
    return "–" if value is None else f"{value * 100:+.{digits}f} %"


def brief(case: dict) -> str:
    if "cpu" not in case:
        return case.get("error", "no figures")
    cpu, window = case["cpu"], case["window"]
    report, lag = window["report"], window["lag"] or {}
    source = window["sent"]["source"]
    text = (f"server tree {cpu['server_tree']['core_pct']} % of a core (server "
            f"{cpu['server']['core_pct']}, bridge {cpu['bridge']['core_pct']}, inspect "
            f"{cpu['inspect']['core_pct']}); Redis {cpu['redis']['core_pct']}; source "
            f"{cpu['source']['core_pct']} at {source['achieved_rate']}/s; lag p99 "
            f"{lag.get('p99_ms')} ms (max bucket {lag.get('max_bucket_ms')})")
    if report["deliveries"]:
        last = report["latency_last_client"]
        text += (f"; delivered {report['deliveries']:,}, lost {report['lost']:,}, dup "
                 f"{report['duplicated']:,}; last client p50 {last['p50_ms']} p99 "
                 f"{last['p99_ms']} ms")
    return text


def medians_table(result: dict) -> str:
    rounds = result["config"]["rounds"]
    each = {name: [c.get("figures") for this in result["rounds"]
                   for n, c in this["cases"].items() if n == name]
            for name in CASES}

    def cell(name: str, key: str, digits: int = 1) -> str:
        value = result["medians"].get(name, {}).get(key)
        values = [f[key] if f else None for f in each[name]]
        text = _f(value, digits)
        return text if rounds == 1 else f"{text} ({', '.join(_f(v, digits) for v in values)})"

    lines = ["| case | server tree % of a core | server process | bridge helper "
             "| inspect helper | Redis | source | publisher | load client | loop lag p99 ms "
             "| lag max bucket ms | last client p50 / p99 ms | machine busy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name in CASES:
        if name not in result["medians"]:
            lines.append(f"| {name}. {CASES[name]['label']} | failed " + "| – " * 11 + "|")
            continue
        m = result["medians"][name]
        lines.append(
            f"| {name}. {CASES[name]['label']} | **{cell(name, 'tree')}** "
            f"| {cell(name, 'server')} | {cell(name, 'bridge')} | {cell(name, 'inspect')} "
            f"| {cell(name, 'redis')} | {cell(name, 'source')} | {cell(name, 'publisher')} "
            f"| {cell(name, 'client')} | **{cell(name, 'lag_p99_ms', 2)}** "
            f"| {cell(name, 'lag_max_bucket_ms')} "
            f"| {_f(m['p50_ms'])} / {_f(m['p99_ms'])} | {_f(m['busy'], 0, ' %')} |")
    return "\n".join(lines)


def rounds_table(result: dict) -> str:
    lines = ["| round | case | server tree % (net) | server process % | bridge % (net) | Redis % "
             "| source rate /s (worst lag ms) | bridge wrote / dup | delivered | lost | dup "
             "| last client p50 / p99 / max ms | lag p99 / max bucket ms (idle p99) "
             "| frame bytes | load avg 1 min | checks |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for this in result["rounds"]:
        for name in this["order"]:
            case = this["cases"].get(name)
            if case is None:
                continue
            if "cpu" not in case:
                lines.append(f"| {this['round']} | {name} | failed: {case.get('error')} "
                             + "| – " * 13 + "|")
                continue
            cpu, window = case["cpu"], case["window"]
            report, source = window["report"], window["sent"]["source"]
            lag, last = window["lag"] or {}, report["latency_last_client"]
            counters = window["bridge_counters"]
            bridged = (f"{int(counters.get('written', 0)):,} / "
                       f"{int(counters.get('duplicates', 0)):,}" if CASES[name]["bridge"] else "–")
            delivering = CASES[name]["bridge"] or CASES[name]["hook"]
            failed = [k for k, v in case["checks"].items() if not v]
            lines.append(
                f"| {this['round']} | {name} | {_f(cpu['server_tree']['core_pct'])} "
                f"({_f(cpu['server_tree']['net_core_pct'])}) | {_f(cpu['server']['core_pct'])} "
                f"| {_f(cpu['bridge']['core_pct'])} "
                f"({_f(cpu['bridge']['net_core_pct'])}) | {_f(cpu['redis']['core_pct'])} "
                f"| {_f(source['achieved_rate'])} ({_f(source['worst_lag_ms'])}) | {bridged} "
                f"| {report['deliveries']:,} | {report['lost'] if delivering else '–'} "
                f"| {report['duplicated']:,} "
                f"| {_f(last['p50_ms'])} / {_f(last['p99_ms'])} / {_f(last['max_ms'])} "
                f"| {_f(lag.get('p99_ms'), 2)} / {_f(lag.get('max_bucket_ms'))} "
                f"({_f(case['figures']['idle_lag_p99_ms'], 2)}) "
                f"| {_f(window.get('frame_bytes'), 0)} "
                f"| {window['load_average_1m_before']} → {window['load_average_1m_after']} "
                f"| {'ok' if not failed else 'FAILED: ' + ', '.join(failed)} |")
    return "\n".join(lines)


def verdict(result: dict) -> List[str]:
    head, med, rounds = result["headline"], result["medians"], result["differences"]
    out = []

    def each(key: str, field: str, scale: float = 1.0, digits: int = 1) -> str:
        return ", ".join(_f(row[key][field] * scale, digits) for row in rounds if key in row)

    bc, ba = head.get("B_minus_C", {}), head.get("B_minus_A", {})
    if bc.get("tree_pp") is not None:
        holds_pp = bc["tree_pp"] < GOAL_SHARE * 100
        holds_rel = bc["tree_rel"] is not None and bc["tree_rel"] < GOAL_SHARE
        out.append(
            f"- **The bridge beyond the deliveries (B − C)**: the server tree (the server process "
            f"and its helpers) used **{bc['tree_pp']:+.1f} percentage points of one core** more "
            f"with the bridge than with the hook path delivering the same events (each round: "
            f"{each('B_minus_C', 'tree_pp')}), **{_pct(bc['tree_rel'])}** relative to C (each "
            f"round: {each('B_minus_C', 'tree_rel', 100)} %). Under 10 % of one core: "
            f"{'yes' if holds_pp else 'no'}; under 10 % of C's server CPU: "
            f"{'yes' if holds_rel else 'no'}. Of that, the server process itself: "
            f"{bc['server_pp']:+.1f} points (each round: {each('B_minus_C', 'server_pp')}); "
            f"the rest is the bridge helper's process.")
    if ba.get("tree_pp") is not None:
        out.append(
            f"- **Turning the bridge on (B − A)**, deliveries to the "
            f"{result['config']['clients']:,} sockets included: "
            f"**{ba['tree_pp']:+.1f} points of one core** (each round: "
            f"{each('B_minus_A', 'tree_pp')}), **{_pct(ba['tree_rel'], 0)}** relative to A "
            f"(each round: {each('B_minus_A', 'tree_rel', 100, 0)} %). That is mostly fan-out: "
            f"the same deliveries through the hook (C − A) cost "
            f"{head['C_minus_A']['tree_pp']:+.1f} points.")
    if "B" in med:
        out.append(
            f"- **The bridge helper alone** (its own process, in the server tree): "
            f"{_f(med['B']['bridge'])} % of one core in the load window "
            f"({_f(med['B']['bridge_net'])} % net of its idle rate), for "
            f"{result['config']['rate']:g} Celery task events/s plus heartbeats: "
            f"{med['B']['bridge_net'] / 100 / result['config']['rate'] * 1e6:,.0f} µs of CPU "
            "per task event (reading it from the broker, mapping it, one EVALSHA round trip to "
            "write it); Redis "
            f"{head['B_minus_C']['redis_pp']:+.1f} points against C (the once-only keys, "
            f"the Celery event channel's subscriber).")
    busy = [med[name]["busy"] for name in ("B", "C") if name in med and med[name]["busy"]]
    if busy and max(busy) >= 80:
        client = max(med[name]["client"] for name in ("B", "C") if name in med)
        out.append(
            f"- **Caveat: the two cores were {'–'.join(sorted({f'{b:.0f}' for b in busy}))} % "
            f"busy** in B and C "
            f"(the load client alone took up to {client:.0f} % of one, the server process about "
            "as much). Every process here competes for the cores, so a process's CPU per event "
            "is higher than it would be on a quiet machine, and the relative figure depends on "
            "the fan-out: C's server CPU, the denominator, grows with the sockets.")
    if all(name in med for name in CASES):
        out.append(
            f"- **Loop lag** (`{LAG_METRIC}`, load window, p99 / highest bucket reached): "
            f"A {_f(med['A']['lag_p99_ms'], 2)} / {_f(med['A']['lag_max_bucket_ms'])} ms, "
            f"B {_f(med['B']['lag_p99_ms'], 2)} / {_f(med['B']['lag_max_bucket_ms'])} ms, "
            f"C {_f(med['C']['lag_p99_ms'], 2)} / {_f(med['C']['lag_max_bucket_ms'])} ms: "
            "with the same deliveries, the bridge adds no loop lag the histogram can show "
            "(its bounds near these figures are 10, 20 and 50 ms).")
    failed = [f"{name} (round {this['round']})" for this in result["rounds"]
              for name, case in this["cases"].items() if not case.get("checks_passed")]
    out.append("- Checks: " + (
        "in every round, in B and C every socket got every event exactly once and in order "
        "(none lost, duplicated or out of range, no socket dropped), B's bridge wrote one "
        "protocol event per task event with no duplicate, no task event reached a socket in "
        "A, and the source kept its rate." if not failed
        else f"FAILED in {', '.join(failed)} (see the JSON and the rounds table)."))
    return out


def log_notes(result: dict) -> List[str]:
    notes = []
    for this in result["rounds"]:
        for name, case in this["cases"].items():
            entry = case.get("server_log") or {}
            if entry.get("excerpt"):
                notes.append(f"- round {this['round']}, case {name} ({entry['lines']} lines, "
                             f"`{entry['path']}`):")
                notes += [f"    {line}" for line in entry["excerpt"][:8]]
    return notes


def markdown(result: dict) -> str:
    config, meta = result["config"], result["meta"]
    rounds = config["rounds"]
    known = sum((c.get("server_log") or {}).get("known_warnings", 0)
                for this in result["rounds"] for c in this["cases"].values())
    out = [
        "## The Celery event bridge at "
        f"{config['rate']:g} task events/s", "",
        "Goal (the issue): *the bridge at 200 task events/s adds less than 10 % server CPU and "
        "no loop lag beyond the current figures.*", "",
        f"**How.** No Celery worker (it would take the machine's {meta['cpus']} cores): a source "
        "process sends Celery's own events with Celery's `EventDispatcher` on the Redis broker, "
        f"paced evenly at {config['rate']:g}/s: per task `task-received` (args/kwargs reprs as "
        "a worker sends them, e.g. `['A-12']`, `{'user_id': 'u12'}`, retries 0), `task-started`, "
        f"`task-succeeded` (result repr, runtime), from {len(config['workers'])} fake "
        f"hostnames, each sending `worker-heartbeat` every {config['heartbeat_interval_s']:g} s "
        "all the time. Cases, each with a fresh server (`python run.py`) on the same Redis, "
        f"{config['clients']:,} sockets from one load-client process, the source sending in all "
        "three: **A** bridge off (the server ignores the Celery events); **B** bridge on "
        "(`NOTIFY_CELERY_EVENTS=1`): one protocol event per task event, written by the bridge "
        "helper and relayed to every socket; **C** bridge off, the hook path: "
        "`bench.publisher` writes as many protocol events per second through the emitter's Lua "
        "script, relayed to every socket. Per case: connect, one second of events to warm "
        f"up, an idle window of {config['idle_s']:g} s (sockets open, heartbeats only), the "
        f"load window of {config['window_s']:g} s ({config['events_per_window']:,} task "
        f"events = {config['tasks_per_window']:,} tasks, then the last deliveries), another "
        "idle window. CPU is user + system (psutil) over the load window as a share of one "
        "core: the *server tree* is the server process and its descendants (the bridge helper, "
        "the inspect helper, multiprocessing's resource tracker), each also on its own; *net* "
        "subtracts the idle windows' rate. Loop lag: the change of the server's "
        f"`{LAG_METRIC}` histogram over the load window (p99 interpolated as PromQL does; "
        "the bucket bounds are 0.5, 1, 2, 5, 10, 20, 50 ms...). Latency: from the source's "
        "send (B) or the publisher's (C) to the arrival at the last socket. Servers: "
        "`NOTIFY_LOG_LEVEL=WARNING`, connection and action limits off, WebSocket pings off "
        "(`NOTIFY_PING_INTERVAL=0`: identical in all cases, and no ping round falls in one "
        "window but not another). "
        + (f"{rounds} rounds, every other one in reverse order (A B C, C B A, ...); the "
           "differences are taken within each round and the headline is their median."
           if rounds > 1 else "One round."), "",
        "**Defining \"adds less than 10 % server CPU\"**: the bridge's cost is B − C (the "
        "same events reach the same sockets in both; only the path differs), stated as "
        "percentage points of one core and relative to C's server-tree CPU. B − A is given "
        "too, but most of it is the fan-out of the events to the sockets, which any way of "
        "producing them costs.", ""]
    out += verdict(result)
    out += ["", f"Medians over the {rounds} rounds (each round in brackets), % of one core "
            "over the load window:" if rounds > 1 else "Figures, % of one core over the load "
            "window:", "", medians_table(result), "", "Every round:", "",
            rounds_table(result), ""]
    notes = log_notes(result)
    out += ["**Server logs** (WARNING and up, the bridge helper's included; "
            f"{known} expected `no Celery worker answered the inspect poll` warnings not "
            "shown): " + ("nothing else." if not notes else ""), *notes, ""]
    pin = meta.get("pinning")
    git, code = meta["git"], meta["server_code"]
    out += [
        f"Machine: {meta['cpus']} CPUs shared by everything in the test (server, its helpers, "
        "Redis, the source, the publisher, the load client)"
        + (f"; pinned: server and helpers on CPU {pin['server_and_its_helpers']}, the rest on "
           f"{pin['redis_source_publisher_client']}" if pin else "; no CPU pinning")
        + f"; Python {meta['python']}, "
        + ", ".join(f"{k} {v}" for k, v in meta["packages"].items())
        + f"; load average at start {meta['load_average_at_start']}, at end "
        f"{meta.get('load_average_at_end')}. Server code: commit `{git['commit']}`"
        + (f" with the working tree's uncommitted changes to {', '.join(code['uncommitted'])}"
           if code["uncommitted"] else "")
        + f", copied once at the start (digest `{code['sha256']}`) so every case ran the same "
        "code" + ("; the working tree changed during the run"
                  if code.get("working_tree_changed_during_run") else "")
        + f"; {meta['started']}. Command: `{meta['command']}`. Raw figures: `{config['json']}`.",
        ""]
    return "\n".join(out)


# -- entry points ----------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.bridge",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="Celery task events per second")
    parser.add_argument("--clients", type=int, default=1000, help="sockets, every case")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of task events")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds per idle window")
    parser.add_argument("--window", type=float,
                        help="seconds of the load window (default: the sending time + --tail, "
                             "rounded up)")
    parser.add_argument("--tail", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3,
                        help="times to run the cases (every other round in reverse order)")
    parser.add_argument("--pin", action="store_true",
                        help="server (and its helpers) on CPU 0, everything else on CPU 1")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path, default=OUT / "bridge.json")
    parser.add_argument("--md", type=Path, default=OUT / "bridge.md")
    args = parser.parse_args(argv)
    if args.clients < 1 or args.rate <= 0 or args.seconds <= 0 or args.rounds < 1:
        parser.error("need --clients >= 1, --rate > 0, --seconds > 0, --rounds >= 1")
    return args


def run(args) -> dict:
    """The whole step; every child is stopped however it ends."""
    raise_fd_limit()
    step = BridgeBench(args)
    try:
        result = step.run()
    finally:
        step.close()
    step.save(result)
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(markdown(result))
    return result


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`: every child is stopped


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["source"]:
        asyncio.run(source_main(argv[1]))
        return 0
    if argv[:1] == ["client"]:
        client_main()
        return 0
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = parse_args(argv)
    result = run(args)
    if result.get("medians"):
        log(medians_table(result))
    for line in verdict(result):
        log(line)
    log(f"results: {args.json}; Markdown: {args.md}")
    return 0 if result["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
