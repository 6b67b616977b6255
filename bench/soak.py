"""The soak: memory, file descriptors and tasks stay flat under churn, and resumes lose nothing.

    bench/.venv/bin/python -m bench.soak --duration 300     # writes bench/RESULTS-soak.md
    bench/.venv/bin/python -m bench.soak --duration 3600    # RESULTS-soak-hour.md, soak-rss.png

The parts, all on loopback and started here (stopped by PID at the end, whatever happens):
one redis-server on a fixed port with persistence off (events, history and the broker); two
server processes (`run.py`, the bridge on: NOTIFY_CELERY_EVENTS=1; NOTIFY_POLL_INTERVAL=5
and NOTIFY_REFRESH_DELAY=2 keep the queue_status pushes under one a second), B started first so that
it takes the poller lease, then A, the measured one, which every soak socket connects to;
one Celery worker of bench/apps/hook_app.py with the hook and `-E` (so the hook and the
bridge both write every transition, deduplicated: exactly once); a producer thread sending
`--rate` tasks a second (about three events each: task_received from the bridge,
task_started and task_completed from the hook), their subjects (`avid`) `soak-s0` ..
`soak-s<N-1>` in turn; and the load client (bench/soakclient.py).

The sockets: `--clients` in all, of which `--churners` reconnect every 3 to 6 s (jittered):
`--resumers` of them follow the one subject `soak-s0` and reconnect with
`?last_event_id=` (closing with a reset and a close frame in turn), the rest half reset TCP
(SO_LINGER 0) and half close with a close frame, and reconnect fresh. The others
subscribe to one subject each, in turn (about 3 events a second each, not all 150).

The run, `--duration` s of churn between two measurements of A with every socket open and
no churn: the baseline (after a warm-up: `--warmup` s connected, when the cold figure is
taken, then `--warmup-churn` s of the same churn) and the final one (after the churn
stopped, the producer stopped and the sockets settled). At a third of the churn it pauses,
A is measured (mid), B (the leader) gets SIGTERM, A takes the lease, B is started again,
and A is measured again (the leader baseline: what holding the lease changes); at two
thirds Redis is stopped and started again on the same port (empty: the producer pauses 2 s
before, so the history the soak read holds every event written; the lease key goes with
the data, so either server may hold the lease after it).

Checked (exit 1 if any fails): every resume socket got every event of its subject that the
history held, after its first one, once and in order (bench/soakcheck.py), except those a
`resync` announced as lost; resyncs only within 20 s after the Redis restart; A's RSS at the
end within `--rss-limit-mb` of the baseline; A's asyncio task count (`notify_asyncio_tasks`)
at the end and in the middle equal to the baseline's (the floor of 7 readings), and its fds
other than connections to Redis too (client sockets, pipes, files: by kind; the Redis
connections are reported, the pool keeps what bursts opened); no socket closed unasked,
no connect error; no "Traceback" in either server's log. Every 5 s A's RSS, fds and tasks
are sampled: the curve (PNG) marks the churn, the lease move and the Redis restart.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import orjson
import redis
from celery import Celery

from bench import procs
from bench.procs import Child, RpcChild, free_port, wait_for_port
from bench.soakcheck import check_follower, follower_ok
from bench.systems import NO_LIMITS, ROOT
from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.protocol.names import Keys

BENCH = ROOT / "bench"
APPS = BENCH / "apps"
OUT = BENCH / "out" / "soak"
FOLLOW = "soak-s0"
HISTORY = Keys().history_stream
COUNTER = "bench:soak:done"
# A poll every 5 s and after task events at most every 2 s (the defaults, 2 s and 0.2 s, push
# a new queue_status to all 1,000 sockets about 4 times a second at 50 tasks/s: 4,000 frames
# a second, on a shared 2-core machine on which an overloaded server falls behind).
SERVER_ENV = {"NOTIFY_CELERY_EVENTS": "1", "NOTIFY_POLL_INTERVAL": "5",
              "NOTIFY_REFRESH_DELAY": "2", "NOTIFY_LOG_LEVEL": "WARNING", **NO_LIMITS}
RESYNC_WINDOW_S = 20.0     # resyncs allowed from the Redis stop to this long after it is back
SAMPLE_EVERY_S = 5.0
# fd kinds that must be back to the baseline exactly: everything but the Redis pool's
# connections (live, or closed by Redis and not yet reclaimed: those are unmatched sockets).
NOT_REDIS = ("clients", "other_sockets", "pipes", "other")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def get_json(port: int, path: str) -> dict:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:  # /readyz answers 503 while not ready
        return json.loads(error.read())


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return float(re.search(rf"^{name} (\S+)$", text, flags=re.M).group(1))


class Server:
    """One `run.py` process on a port of its own for good (restartable)."""

    def __init__(self, name: str, redis_url: str, log_dir: Path):
        self.name, self.redis_url, self.log_dir = name, redis_url, log_dir
        self.port = free_port()
        self.child: Optional[Child] = None
        self.logs: List[Path] = []
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self.child = Child(f"{self.name}-{self.starts}", [sys.executable, "run.py", "--host",
                                                          "127.0.0.1", "--port", str(self.port)],
                           log_dir=self.log_dir, cwd=ROOT,
                           env={"REDIS_URL": self.redis_url, **SERVER_ENV})
        self.logs.append(self.child.log_path)
        wait_for_port(self.child, self.port)

    def ready(self) -> dict:
        return get_json(self.port, "/readyz")


def wait_until(what: str, condition, timeout: float, state=lambda: None) -> None:
    """Poll `condition()` every 0.2 s; raise RuntimeError, with `state()`, after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}; {state()}")
        time.sleep(0.2)


class Producer(threading.Thread):
    """Sends `rate` tasks a second (paced on the clock), subjects in turn; `paused` holds it."""

    def __init__(self, broker_url: str, rate: float, subjects: int):
        super().__init__(daemon=True)
        self.app = Celery("soak-producer", broker=broker_url, set_as_current=False)
        self.rate, self.subjects = rate, subjects
        self.sent = self.failed = 0
        self.paused = threading.Event()
        self.stopping = threading.Event()

    def run(self) -> None:
        next_at = time.monotonic()
        while not self.stopping.is_set():
            if self.paused.is_set():
                time.sleep(0.05)
                next_at = time.monotonic()
                continue
            try:
                self.app.send_task("hook_app.noop", args=(f"soak-s{self.sent % self.subjects}",))
                self.sent += 1
            except Exception:  # Redis restarting: counted, the pace goes on
                self.failed += 1
            next_at += 1.0 / self.rate
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:
                next_at = time.monotonic()  # after a stall, no burst to catch up

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=30)
        self.app.close()


class HistoryReader(threading.Thread):
    """Reads the history stream as it grows (every second): the ids of FOLLOW's events,
    and the count of all events. `read_now()` catches up at once (before Redis stops)."""

    def __init__(self, redis_url: str):
        super().__init__(daemon=True)
        self.client = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.last = "0-0"
        self.follow_ids: List[str] = []
        self.total = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def read_now(self) -> None:
        with self.lock:
            while True:
                entries = self.client.xrange(HISTORY, min=f"({self.last}", count=5000)
                if not entries:
                    return
                for entry_id, fields in entries:
                    self.total += 1
                    data = orjson.loads(fields[b"event"]).get("data") or {}
                    if isinstance(data, dict) and data.get("avid") == FOLLOW:
                        self.follow_ids.append(entry_id.decode())
                self.last = entries[-1][0].decode()

    def run(self) -> None:
        while not self.stopping.wait(1.0):
            try:
                self.read_now()
            except redis.RedisError:
                pass  # Redis restarting: the next read catches up

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=10)
        self.read_now()


class Sampler(threading.Thread):
    """A's RSS, fd count, asyncio tasks and sockets every SAMPLE_EVERY_S s."""

    def __init__(self, server: Server, started: float):
        super().__init__(daemon=True)
        self.server, self.started = server, started
        self.samples: List[dict] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(SAMPLE_EVERY_S):
            try:
                self.samples.append({"t": round(time.monotonic() - self.started, 1),
                                     **measure_once(self.server)})
            except Exception:  # a missed sample is a gap in the curve, not a failure
                pass

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=20)


def measure_once(server: Server) -> dict:
    ps = server.child.ps
    return {"rss": ps.memory_info().rss, "fds": ps.num_fds(),
            "cpu": round(server.child.cpu_seconds(), 2),
            "tasks": int(metric(server.port, "notify_asyncio_tasks")),
            "sockets": int(metric(server.port, "notify_open_connections"))}


def fd_kinds(server: Server, redis_port: int) -> Dict[str, int]:
    """A's open fds by what they are: client sockets (on its port), Redis connections,
    other sockets, pipes, the rest."""
    ps = server.child.ps
    kinds = {"clients": 0, "redis": 0, "other_sockets": 0, "pipes": 0, "other": 0}
    for conn in ps.net_connections(kind="inet"):
        if conn.laddr and conn.laddr.port == server.port and conn.raddr:
            kinds["clients"] += 1
        elif conn.raddr and conn.raddr.port == redis_port:
            kinds["redis"] += 1
        else:
            kinds["other_sockets"] += 1
    sockets = sum(kinds.values())
    for fd in os.listdir(f"/proc/{ps.pid}/fd"):
        try:
            target = os.readlink(f"/proc/{ps.pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:"):
            kinds["pipes"] += 1
        elif not target.startswith("socket:"):
            kinds["other"] += 1
    kinds["unix_or_unmatched_sockets"] = ps.num_fds() - sockets - kinds["pipes"] - kinds["other"]
    return kinds


def sent_by_type(port: int) -> Dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {kind: float(value) for kind, value in
            re.findall(r'^notify_messages_sent_total\{type="([^"]+)"\} (\S+)$', text, flags=re.M)}


def measure(server: Server, readings: int = 7) -> dict:
    """`readings` measurements a second apart: the median RSS, and the smallest fd and
    task counts: a poll or a refresh in flight holds a task (and the leader's inspect
    call a pipe read) for a moment, so a single reading may be one above the floor that
    persists. Every reading is kept (`*_each`)."""
    taken = []
    for number in range(readings):
        if number:
            time.sleep(1.0)
        taken.append(measure_once(server))
    return {"rss": int(statistics.median(r["rss"] for r in taken)),
            "rss_each": [r["rss"] for r in taken],
            "fds": min(r["fds"] for r in taken), "fds_each": [r["fds"] for r in taken],
            "tasks": min(r["tasks"] for r in taken), "tasks_each": [r["tasks"] for r in taken],
            "sockets": taken[-1]["sockets"]}


def tracebacks(paths: List[Path]) -> int:
    count = 0
    for path in paths:
        try:
            count += path.read_text(errors="replace").count("Traceback")
        except OSError:
            pass
    return count


class Soak:
    def __init__(self, args):
        self.args = args
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_dir = OUT / f"logs-{stamp}"
        self.redis = EmbeddedRedis(port=free_port(),
                                   data_dir=tempfile.mkdtemp(prefix="notify-soak-redis-"))
        self.producer: Optional[Producer] = None
        self.reader: Optional[HistoryReader] = None
        self.sampler: Optional[Sampler] = None
        self.moments: Dict[str, float] = {}
        self.started = time.monotonic()

    def mark(self, name: str) -> None:
        self.moments[name] = round(time.monotonic() - self.started, 1)
        log(f"-- {name} at {self.moments[name]} s")

    def close(self) -> None:
        for part in (self.sampler, self.reader, self.producer):
            if part is not None and part.is_alive():
                part.stopping.set()
        procs.stop_all()
        self.redis.stop()

    def run(self) -> dict:
        args = self.args
        url = self.redis.start()
        log(f"redis-server on {url} (no persistence); logs in {self.log_dir}")
        b = Server("server-b", url, self.log_dir)
        a = Server("server-a", url, self.log_dir)
        b.start()
        wait_until("B to take the lease", lambda: b.ready().get("leader") == b.ready()["instance"],
                   30)
        a.start()
        wait_until("A to see B as the leader",
                   lambda: a.ready().get("leader") == b.ready()["instance"], 30)
        Child("worker", [sys.executable, "-m", "celery", "-A", "hook_app", "worker", "-P",
                         "prefork", "-c", "2", "--without-gossip", "--without-mingle", "-E",
                         "-l", "WARNING", "-n", "soak@127.0.0.1"],
              log_dir=self.log_dir, cwd=ROOT,
              env={"PYTHONPATH": f"{APPS}{os.pathsep}{ROOT}", "BENCH_BROKER_URL": url,
                   "BENCH_HOOK": "1", "BENCH_COUNTER": COUNTER})
        self.reader = HistoryReader(url)
        self.reader.start()
        self.producer = Producer(url, args.rate, args.subjects)
        self.producer.start()
        wait_until("the worker's first events", lambda: self.reader.total > 0, 60)
        log("worker, producer and history reader running")

        client = RpcChild("soakclient", [sys.executable, "-m", "bench.soakclient"],
                          log_dir=self.log_dir, cwd=ROOT)
        kinds = {"reset": (args.churners - args.resumers) // 2, "resume": args.resumers}
        kinds["clean"] = args.churners - kinds["reset"] - args.resumers
        connected = client.call("connect", timeout=180, url=f"ws://127.0.0.1:{a.port}/ws/tasks/",
                                steady=args.clients - args.churners, kinds=kinds,
                                subjects=[f"soak-s{n}" for n in range(args.subjects)],
                                follow=FOLLOW)
        log(f"connected: {connected}")
        self.sampler = Sampler(a, self.started)
        self.sampler.start()
        time.sleep(args.warmup)
        cold = measure(a)
        cold["fd_kinds"] = fd_kinds(a, self.redis.port)
        self.mark("cold (before any churn)")
        log(f"cold: {cold}")
        # The warm-up churns too: the allocator's arenas and the Redis pool grow to what
        # churn needs once (the cold figure is reported beside), then the baseline.
        client.call("churn_start", timeout=30, min_s=args.min_s, max_s=args.max_s)
        time.sleep(args.warmup_churn)
        client.call("churn_stop", timeout=120)
        time.sleep(args.settle)
        baseline = measure(a)
        baseline["fd_kinds"] = fd_kinds(a, self.redis.port)
        sent_before = sent_by_type(a.port)
        self.mark("baseline")
        log(f"baseline: {baseline}")

        churn = args.duration
        client.call("churn_start", timeout=30, min_s=args.min_s, max_s=args.max_s)
        self.mark("churn start")
        time.sleep(churn / 3)

        paused = client.call("churn_stop", timeout=120)
        self.mark("churn paused")
        time.sleep(args.settle)
        mid = measure(a)
        mid["fd_kinds"] = fd_kinds(a, self.redis.port)
        self.mark("mid (before the lease move)")
        log(f"mid: {mid}")
        b.child.stop()
        self.mark("leader B stopped (SIGTERM)")
        wait_until("A to take the lease", lambda: a.ready().get("leader") == a.ready()["instance"],
                   30, a.ready)
        self.mark("A holds the lease")
        b.start()
        wait_until("B to follow A", lambda: b.ready().get("leader") == a.ready()["instance"], 30,
                   lambda: (a.ready(), b.ready()))
        time.sleep(5)  # the inspect helper and the poller settle in
        leader_baseline = measure(a)
        leader_baseline["fd_kinds"] = fd_kinds(a, self.redis.port)
        self.mark("leader baseline")
        log(f"leader baseline: {leader_baseline}; paused with {paused}")
        client.call("churn_start", timeout=30, min_s=args.min_s, max_s=args.max_s)
        self.mark("churn resumed")
        time.sleep(churn / 3)

        self.producer.paused.set()
        time.sleep(2.0)  # the tasks in flight finish and their events are written
        self.reader.read_now()
        self.mark("redis stopping")
        self.redis.stop()
        self.redis.start()
        self.mark("redis back")
        self.producer.paused.clear()
        time.sleep(churn / 3)

        status = client.call("churn_stop", timeout=120)
        self.mark("churn stop")
        self.producer.stop()
        time.sleep(5)  # the last tasks' events are written and relayed
        self.reader.stop()
        time.sleep(args.settle)
        sent_after = sent_by_type(a.port)
        final = measure(a)
        final["fd_kinds"] = fd_kinds(a, self.redis.port)
        self.sent = {kind: round(value - sent_before.get(kind, 0.0))
                     for kind, value in sent_after.items()}
        final["leader_changes"] = int(metric(a.port, "notify_poller_leader_changes_total"))
        final["leader"] = a.ready().get("leader") == a.ready()["instance"]
        self.mark("final")
        log(f"final: {final}; client: {status}")
        self.sampler.stop()
        report = client.call("report", timeout=120)
        client.call("close", timeout=30)
        done = int(redis.Redis.from_url(url).get(COUNTER) or 0)
        self.cpu = {"server_a_s": round(a.child.cpu_seconds(), 1),
                    "load_client_s": round(client.cpu_seconds(), 1),
                    "wall_s": round(time.monotonic() - self.started, 1)}
        return self.verdict(cold, baseline, mid, leader_baseline, final, status, report, a, b,
                            done)

    def verdict(self, cold, baseline, mid, leader_baseline, final, status, report, a, b,
                done) -> dict:
        args = self.args
        followers = [check_follower(logged, self.reader.follow_ids)
                     for logged in report["followers"]]
        restart_from = self.started + self.moments["redis stopping"]
        restart_until = self.started + self.moments["redis back"] + RESYNC_WINDOW_S
        mono_to_wall = time.time() - time.monotonic()
        restart_from += mono_to_wall
        restart_until += mono_to_wall
        resyncs = report["resync_times"]
        stray = [t for t in resyncs if not restart_from - 1 <= t <= restart_until]
        rss_growth = final["rss"] - baseline["rss"]
        samples = self.sampler.samples
        before_restart = [x["rss"] for x in samples if x["t"] < self.moments["redis stopping"]]
        after_restart = [x["rss"] for x in samples
                         if x["t"] >= self.moments["redis back"] + 2 * SAMPLE_EVERY_S]
        steps = {"warm_up_churn": baseline["rss"] - cold["rss"],
                 "first_third": mid["rss"] - baseline["rss"],
                 "lease_move": leader_baseline["rss"] - mid["rss"],
                 "second_third": before_restart[-1] - leader_baseline["rss"],
                 "redis_restart": after_restart[0] - before_restart[-1],
                 "last_third": final["rss"] - after_restart[0]}
        server_tracebacks = tracebacks(a.logs + b.logs)
        checks = {
            "followers_once_in_order_complete": all(follower_ok(f) for f in followers),
            "resyncs_only_around_redis_restart": not stray,
            "rss_within_limit": rss_growth <= args.rss_limit_mb * 2 ** 20,
            "fds_other_than_redis_back_to_baseline": all(
                final["fd_kinds"][kind] == baseline["fd_kinds"][kind] == cold["fd_kinds"][kind]
                for kind in NOT_REDIS),
            "tasks_back_to_baseline": final["tasks"] == baseline["tasks"] == mid["tasks"]
            == cold["tasks"],
            "all_sockets_open_at_end": final["sockets"] == args.clients
            and status["open"] == args.clients,
            "no_unexpected_close": status["unexpected_closes"] == 0,
            "no_connect_error": not status["errors"],
            "no_server_traceback": server_tracebacks == 0,
        }
        totals = {key: sum(f[key] for f in followers)
                  for key in ("received", "duplicates", "out_of_order", "missing",
                              "lost_to_resync", "resyncs", "unexpected")}
        worker_log = self.log_dir / "worker.log"
        return {
            "config": {"duration_s": args.duration, "clients": args.clients,
                       "churners": args.churners, "resumers": args.resumers,
                       "rate": args.rate, "subjects": args.subjects, "min_s": args.min_s,
                       "max_s": args.max_s, "warmup_s": args.warmup,
                       "warmup_churn_s": args.warmup_churn, "settle_s": args.settle,
                       "rss_limit_mb": args.rss_limit_mb},
            "meta": {"started": self.started_iso, "command": " ".join(
                ["bench/.venv/bin/python -m bench.soak", *sys.argv[1:]]),
                "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                         capture_output=True, text=True).stdout.strip(),
                "cpus": os.cpu_count(), "python": platform.python_version(),
                "kernel": platform.release(), "load_average_at_end":
                [round(n, 2) for n in os.getloadavg()], "log_dir": str(self.log_dir)},
            "cold": cold, "baseline": baseline, "mid": mid, "leader_baseline": leader_baseline,
            "final": final, "sent_by_type": self.sent,
            "follower_resyncs": report["follower_resyncs"],
            "rss_growth": rss_growth,
            "rss_growth_vs_leader_baseline": final["rss"] - leader_baseline["rss"],
            "rss_steps": steps,
            "client": status, "moments": self.moments,
            "producer": {"sent": self.producer.sent, "failed": self.producer.failed,
                         "tasks_done": done},
            "history": {"events": self.reader.total, "follow_events": len(self.reader.follow_ids)},
            "followers": totals, "followers_each": followers,
            "resyncs": {"total": len(resyncs), "outside_window": len(stray),
                        "last_after_restart_s": round(max(resyncs) - (restart_from + 0), 1)
                        if resyncs else None},
            "cpu": self.cpu, "server_tracebacks": server_tracebacks,
            "worker_tracebacks": tracebacks([worker_log]),
            "samples": self.sampler.samples, "checks": checks,
            "checks_passed": all(checks.values())}


# -- output ----------------------------------------------------------------------------

def mb(value: float) -> str:
    return f"{value / 2 ** 20:,.1f} MB"


def markdown(result: dict) -> str:
    c, m = result["config"], result["meta"]
    base, lead, final = result["baseline"], result["leader_baseline"], result["final"]
    mid, cold = result["mid"], result["cold"]
    took = result["moments"]["A holds the lease"] - result["moments"]["leader B stopped (SIGTERM)"]
    f, r, p, cl = result["followers"], result["resyncs"], result["producer"], result["client"]
    title = "## Soak: an hour" if c["duration_s"] >= 3600 else f"## Soak: {c['duration_s']} s"
    lines = [
        title, "",
        f"**How** (`{m['command']}`, see bench/soak.py): {c['clients']:,} sockets on server A, "
        f"{c['churners']} of them reconnecting every {c['min_s']:g} to {c['max_s']:g} s "
        f"({cl['reconnects']['reset']:,} TCP resets, {cl['reconnects']['clean']:,} clean "
        f"closes, {cl['reconnects']['resume']:,} resumes with `?last_event_id=` by the "
        f"{c['resumers']} resume sockets following `{FOLLOW}`); {c['rate']:g} tasks/s to one "
        f"Celery worker with the hook and `-E`, the bridge on (NOTIFY_CELERY_EVENTS=1) in both "
        f"servers; {c['subjects']} subjects, the other sockets subscribed to one each; "
        "NOTIFY_POLL_INTERVAL=5, NOTIFY_REFRESH_DELAY=2. "
        f"{c['duration_s']:,} s of churn; at a third the leader B got SIGTERM and A took the "
        "lease (B started again); at two thirds Redis (no persistence) was stopped and started "
        "on the same port.", "",
        "| A, all sockets open, no churn | RSS | fds | asyncio tasks | sockets |",
        "|---|---:|---:|---:|---:|",
        f"| cold (follower, {c['warmup_s']:g} s after connecting) | {mb(cold['rss'])} | "
        f"{cold['fds']} | {cold['tasks']} | {cold['sockets']} |",
        f"| baseline (after {c['warmup_churn_s']:g} s of warm-up churn) | {mb(base['rss'])} | "
        f"{base['fds']} | {base['tasks']} | {base['sockets']} |",
        f"| mid (after the first third, before the lease move) | {mb(mid['rss'])} | "
        f"{mid['fds']} | {mid['tasks']} | {mid['sockets']} |",
        f"| leader baseline (after the lease move) | {mb(lead['rss'])} | {lead['fds']} | "
        f"{lead['tasks']} | {lead['sockets']} |",
        f"| final (after the churn, {c['settle_s']:g} s settle) | {mb(final['rss'])} | "
        f"{final['fds']} | {final['tasks']} | {final['sockets']} |", "",
        f"- **RSS**: final − baseline = **{result['rss_growth'] / 2 ** 20:+.2f} MB** "
        f"(limit {c['rss_limit_mb']:g} MB); final − leader baseline = "
        f"{result['rss_growth_vs_leader_baseline'] / 2 ** 20:+.2f} MB; final − cold = "
        f"{(final['rss'] - cold['rss']) / 2 ** 20:+.2f} MB.",
        f"- **fds and tasks** (the floor of 7 readings a second apart, each in the JSON): "
        f"asyncio tasks {base['tasks']} / {mid['tasks']} / {lead['tasks']} / "
        f"{final['tasks']} (baseline / mid / leader baseline / final); fds {base['fds']} / "
        f"{mid['fds']} / {lead['fds']} / {final['fds']}, of which connections to Redis "
        f"{base['fd_kinds']['redis']} / {mid['fd_kinds']['redis']} / "
        f"{lead['fd_kinds']['redis']} / {final['fd_kinds']['redis']}: redis.asyncio's "
        "connection pool (unbounded) keeps the connections a burst of concurrent reads "
        "(resumes) opened; those Redis closed at its restart stay open fds, in no TCP table "
        "(`unix_or_unmatched_sockets`), until the pool reuses them. By kind, cold / "
        f"baseline / final: {cold['fd_kinds']} / {base['fd_kinds']} / {final['fd_kinds']}.",
        "- **Where the RSS moved** (from the 5 s samples: the last before the Redis stop, the "
        "first 10 s after it is back; the warm-up from the cold figure): " + ", ".join(
            f"{name.replace('_', ' ')} {value / 2 ** 20:+.2f} MB"
            for name, value in result["rss_steps"].items()) + ".",
        f"- **The lease**: A took it {took:.1f} s "
        f"after B's SIGTERM; after the Redis restart (the lease key gone with the data) A "
        f"{'holds it' if final['leader'] else 'does not hold it: B took it'} at the end "
        f"(A saw {final['leader_changes']} change(s) of holder).",
        f"- **Resume sockets**: {f['received']:,} events of `{FOLLOW}` received over "
        f"{c['resumers']} sockets, {f['duplicates']} duplicated, {f['out_of_order']} out of "
        f"order, {f['missing']} missing, {f['unexpected']} not in the history; "
        f"{f['lost_to_resync']} lost to a resync gap; {f['resyncs']} resyncs on them.",
        f"- **Resyncs** (all sockets): {r['total']}, {r['outside_window']} outside the "
        f"{RESYNC_WINDOW_S:g} s after the Redis restart.",
        f"- **Load**: {p['sent']:,} tasks sent ({p['failed']} sends failed around the Redis "
        f"restart), {result['history']['events']:,} events in the history "
        f"({result['history']['follow_events']:,} of `{FOLLOW}`), {cl['frames']:,} frames "
        f"received (sent by A after the baseline, by type: {result['sent_by_type']}); "
        f"unexpected closes {cl['unexpected_closes']}, connect errors "
        f"{cl['errors'] or 0}; tracebacks in the servers' logs {result['server_tracebacks']} "
        f"(in the worker's: {result['worker_tracebacks']}). CPU over the whole run "
        f"({result['cpu']['wall_s']:,.0f} s): server A {result['cpu']['server_a_s']:,.0f} s, "
        f"the load client {result['cpu']['load_client_s']:,.0f} s.",
        "- **Checks**: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}"
                                     for k, v in result["checks"].items()) + ".", "",
        "Moments (s from the start): " + ", ".join(f"{k} {v}" for k, v in
                                                    result["moments"].items()) + ". "
        f"{m['cpus']} CPUs, Linux {m['kernel']}, Python {m['python']}, commit `{m['commit']}`, "
        f"{m['started']}; load average at the end {m['load_average_at_end']}.", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    samples = result["samples"]
    minutes = [s["t"] / 60 for s in samples]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                         gridspec_kw={"height_ratios": [2, 1]})
    top.plot(minutes, [s["rss"] / 2 ** 20 for s in samples], color="tab:blue")
    top.set_ylabel("server A RSS (MB)")
    bottom.plot(minutes, [s["fds"] for s in samples], label="fds", color="tab:green")
    bottom.plot(minutes, [s["tasks"] for s in samples], label="asyncio tasks", color="tab:red")
    bottom.set_ylabel("count")
    bottom.set_xlabel("minutes")
    bottom.legend(loc="upper right")
    styles = {"churn start": "tab:gray", "churn paused": "tab:gray", "churn resumed": "tab:gray",
              "churn stop": "tab:gray", "leader B stopped (SIGTERM)": "tab:orange",
              "redis stopping": "tab:purple"}
    for name, color in styles.items():
        at = result["moments"].get(name)
        if at is not None:
            for axis in (top, bottom):
                axis.axvline(at / 60, color=color, linestyle="--", linewidth=1)
            top.annotate(name, (at / 60, top.get_ylim()[1]), rotation=90, fontsize=7,
                         va="top", ha="right")
    c = result["config"]
    top.set_title(f"Soak: {c['clients']:,} sockets, {c['churners']} churning, "
                  f"{c['rate']:g} tasks/s; RSS final − baseline "
                  f"{result['rss_growth'] / 2 ** 20:+.2f} MB")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


# -- entry point -----------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.soak",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=300, help="seconds of churn")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--churners", type=int, default=100)
    parser.add_argument("--resumers", type=int, default=30)
    parser.add_argument("--rate", type=float, default=50, help="tasks per second")
    parser.add_argument("--subjects", type=int, default=50)
    parser.add_argument("--min-s", type=float, default=3.0)
    parser.add_argument("--max-s", type=float, default=6.0)
    parser.add_argument("--warmup", type=float, default=20.0,
                        help="seconds after connecting before the cold measurement")
    parser.add_argument("--warmup-churn", type=float, default=60.0,
                        help="seconds of churn before the baseline")
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--rss-limit-mb", type=float, default=5.0)
    parser.add_argument("--md", type=Path)
    parser.add_argument("--png", type=Path)
    args = parser.parse_args(argv)
    hour = args.duration >= 3600
    args.md = args.md or BENCH / ("RESULTS-soak-hour.md" if hour else "RESULTS-soak.md")
    args.png = args.png or (BENCH / "soak-rss.png" if hour
                            else OUT / f"soak-rss-{int(args.duration)}.png")
    return args


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`: every child is stopped


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    soak = Soak(args)
    soak.started_iso = now_iso()
    try:
        result = soak.run()
    finally:
        soak.close()
    soak.log_dir.mkdir(parents=True, exist_ok=True)
    (soak.log_dir / "soak.json").write_text(json.dumps(result, indent=1))
    args.md.write_text(markdown(result))
    args.png.parent.mkdir(parents=True, exist_ok=True)
    plot(result, args.png)
    print(markdown(result))
    log(f"JSON: {soak.log_dir / 'soak.json'}; Markdown: {args.md}; curve: {args.png}")
    return 0 if result["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
