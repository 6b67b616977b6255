"""Our Celery event bridge beside Flower: the same burst of Celery task events, at set rates.

    bench/.venv/bin/python -m bench.flower [--rates 2000,5000,10000,20000] [--seconds 3]
                                          [--rounds 2] [--root PATH] [--profile]

The goal (the issue "Celery at line rate"): the bridge follows at least
10,000 Celery events/s on one core (at most 100 µs per event), with figures
beside Flower's from the same run.

**The burst.** A source process (`python -m bench.flower source`) builds
`--seconds` × rate task events with Celery's own `EventDispatcher`, as
bench/bridge.py's source sends them (per task `task-received` with args and
kwargs reprs, `task-started`, `task-succeeded`, from three fake worker
hostnames that also send `worker-heartbeat` every 2 s). It builds them
before the burst, each stamped (`timestamp`) with the time it is due, and
then PUBLISHes them on the broker, paced to the millisecond, pipelined. The
dispatcher's last step, kombu's Redis transport PUBLISHing one message per
event, is replaced by that pipeline: the bytes are kombu's, the channel is
Celery's event channel, and the source stays cheap (a live
`Dispatcher.send` costs about 220 µs of CPU here, one core would not send
5,000 a second).

**The consumers**, one at a time on bursts of the same size and rate (the
machine has 2 cores: both at once would measure the contention), each one
fresh for each burst, after a warm-up of 30 tasks it must have processed:

  bridge  our server (`python run.py` from `--root`, NOTIFY_CELERY_EVENTS=1,
          a history of 1,000,000 events so nothing is trimmed). Measured: its
          bridge helper process (the server's child holding the broker's
          pattern subscription). Lag of each event: its entry's time in the
          history stream `notify:events:history` (the stream id's ms) less
          the Celery event's `timestamp`: p50 / p99 / max, exact per event.
  flower  `celery -b BROKER flower` (Flower's own process). Its `/metrics`
          counter `flower_events_total` (task events) is polled every
          `--poll` s; an event's processing time is interpolated between the
          polls that saw it counted (so its lag is known to about the poll
          interval), and lag = that time less its `timestamp`.

Both consumers' `/metrics` are polled at the same rate (our server's, to
see the bridge's `written` counter), during the idle window before the burst
too. Per burst: events handled (written to our stream / counted by Flower),
lost (never handled within `--catch-up` s of the last send, or no progress
for 5 s), the rate each kept up with (handled during the burst / its
length) and its throughput (handled / time to the last one), the time from
the last send to the last event handled, and the consumer's CPU per event
(user + system, psutil, from the burst's start to the last event handled,
gross and net of its idle window's rate). The source's CPU (building and
sending) and Redis's (INFO) are reported on their own. "Follows" a rate:
nothing lost and p99 lag under 1 s.

The rates run in increasing order; per rate the consumers alternate their
order from round to round. With `--profile`: one more burst per
`--profile-consumers` at `--profile-rate`, py-spy recording the bridge
helper (or Flower's process), summed up as the top 15 frames by own samples
and the top 10 by total.

Writes bench/out/flower/flower.json (`--json`) and bench/RESULTS-flower.md
(`--md`). Every child is stopped by PID, also on error. Loopback only.

The child role of this step:

    python -m bench.flower source BROKER_URL    # the Celery event source
"""

import argparse
import asyncio
import concurrent.futures
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import psutil
import redis

from bench import procs, pyspy
from bench.bridge import TASK_ID_PREFIX, WORKERS, CelerySource, descendant_roles, task_event
from bench.hook import checkout_state
from bench.multiproc import machine_busy
from bench.procs import Child, RpcChild, free_port, serve_commands, wait_for_port
from bench.systems import ROOT
from notify_server.dev.embedded_redis import EmbeddedRedis, find_redis_server
from notify_server.protocol.names import Keys

BENCH = ROOT / "bench"
OUT = BENCH / "out" / "flower"
CONSUMERS = ("bridge", "flower")
WARM_UP_TASKS = 30
STALL_S = 5.0                 # no progress this long after the last send: the rest is lost
LAG_GOAL_S = 1.0              # "bounded lag (p99 ... under 1 s)"
GOAL_RATE = 10000             # "at least 10,000 events/s on one core"
HISTORY_MAXLEN = 1000000
STEP_OF_TYPE = {"task_received": 0, "task_started": 1, "task_completed": 2}
SERVER_CODE = ("notify_server", "handlers", "run.py", "settings.py")


# -- the source ------------------------------------------------------------------------

class BurstSource(CelerySource):
    """bench.bridge's source (its fake workers' heartbeats all the time), with
    bursts built ahead by Celery's EventDispatcher and sent by a pipeline.

    `prepare` builds the events of tasks `first_task ..`: event i is stamped
    `start_at + i / rate`, a start it chooses itself (the build's estimated
    end plus `lead` s). `send` waits for that start and PUBLISHes each
    event once due, every millisecond the ones that are. One thread at a time.
    """

    def __init__(self, broker_url: str):
        super().__init__(broker_url)
        self._client = redis.Redis.from_url(broker_url)
        self._capture_connection = self.app.connection_for_write()
        self._captured: List[tuple] = []
        channel = self._capture_connection.default_channel
        channel._put_fanout = self._capture(channel)  # kombu's last step: one PUBLISH
        self._builders = [self.app.events.Dispatcher(self._capture_connection, hostname=name)
                          for name in WORKERS]
        self._burst: List[tuple] = []
        self._plan: dict = {}

    def _capture(self, channel):
        from kombu.utils.json import dumps

        def put_fanout(exchange, message, routing_key, **_):
            payload = dumps(message)
            for topic in channel._get_publish_topics(exchange, routing_key):
                self._captured.append((topic, payload))
        return put_fanout

    def _build(self, first_task: int, count: int, start_at: float, rate: float) -> List[tuple]:
        self._captured = []
        for i in range(count):
            task, step = divmod(i, 3)
            kind, fields = task_event(first_task + task, step)
            self._builders[(first_task + task) % len(WORKERS)].send(
                kind, timestamp=start_at + i / rate, **fields)
        built, self._captured = self._captured, []
        return built

    def prepare(self, first_task: int, tasks: int, rate: float, lead: float) -> dict:
        count = 3 * tasks
        cpu = time.process_time()
        started = time.monotonic()
        sample = self._build(first_task, min(300, count), time.time(), rate)
        per_event = (time.monotonic() - started) / len(sample)
        start_at = time.time() + per_event * count * 1.5 + lead
        self._burst = self._build(first_task, count, start_at, rate)
        self._plan = {"start_at": start_at, "rate": rate, "first_task": first_task}
        return {"events": count, "start_at": start_at,
                "build_s": round(time.monotonic() - started, 3),
                "build_cpu_us_per_event": round((time.process_time() - cpu) / count * 1e6, 1),
                "message_bytes": round(statistics.fmean(len(p) for _, p in self._burst), 1),
                "late_by_s": round(max(0.0, time.time() - start_at), 3)}

    def send(self) -> dict:
        burst, start_at, rate = self._burst, self._plan["start_at"], self._plan["rate"]
        cpu = time.process_time()
        while time.time() < start_at:
            time.sleep(min(0.01, max(0.0, start_at - time.time())))
        sent, worst = 0, 0.0
        while sent < len(burst):
            now = time.time()
            due = min(len(burst), int((now - start_at) * rate) + 1)
            if due > sent:
                worst = max(worst, now - (start_at + sent / rate))
                pipe = self._client.pipeline(transaction=False)
                for topic, payload in burst[sent:due]:
                    pipe.publish(topic, payload)
                pipe.execute()
                sent = due
            else:
                time.sleep(0.001)
        ended = time.time()
        self._burst = []
        return {"sent": sent, "first_at": start_at, "last_at": ended,
                "seconds": round(ended - start_at, 3),
                "achieved_rate": round((sent - 1) / (ended - start_at), 1) if sent > 1 else rate,
                "worst_lag_ms": round(worst * 1000, 2),
                "send_cpu_us_per_event": round((time.process_time() - cpu) / sent * 1e6, 1)}

    def stop(self) -> None:
        super().stop()
        self._capture_connection.release()


async def source_main(broker_url: str) -> None:
    source = BurstSource(broker_url)

    async def handle(command: dict) -> dict:
        name = command.pop("cmd")
        if name == "prepare":
            return await asyncio.to_thread(source.prepare, **command)
        if name == "send":
            return await asyncio.to_thread(source.send)
        raise ValueError(f"unknown command {name!r}")

    try:
        await serve_commands(handle)
    finally:
        source.stop()


# -- the consumers ---------------------------------------------------------------------

def fetch(port: int, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.read().decode()


def flower_events(text: str) -> int:
    """Task events Flower counted: the sum of flower_events_total{type="task-..."}."""
    return int(sum(float(m[1]) for m in re.finditer(
        r'^flower_events_total\{[^}]*type="task-[^"]*"[^}]*\} (\S+)$', text, flags=re.M)))


class Consumer:
    """A consumer started for one burst: `handled()` counts the task events it
    has processed so far (one /metrics poll); `measured` is the process
    whose CPU is its cost."""

    name = ""

    def __init__(self, broker_url: str, log_dir: Path, tag: str):
        self.port = free_port()
        self.broker_url, self.log_dir, self.tag = broker_url, log_dir, tag

    def handled(self) -> int:
        raise NotImplementedError

    def find_measured(self, broker: redis.Redis) -> psutil.Process:
        raise NotImplementedError

    def stop(self) -> None:
        self.child.stop(grace=15.0)


class BridgeConsumer(Consumer):
    name = "bridge"

    def __init__(self, broker_url: str, log_dir: Path, tag: str, root: Path):
        super().__init__(broker_url, log_dir, tag)
        self.broker = redis.Redis.from_url(broker_url)
        self.child = Child(f"{tag}-notify-server",
                           [sys.executable, str(root / "run.py"), "--host", "127.0.0.1",
                            "--port", str(self.port)], log_dir=log_dir, cwd=root,
                           env={"REDIS_URL": broker_url, "NOTIFY_CELERY_EVENTS": "1",
                                "NOTIFY_LOG_LEVEL": "WARNING", "NOTIFY_PING_INTERVAL": "0",
                                "NOTIFY_HISTORY_MAXLEN": str(HISTORY_MAXLEN)})
        wait_for_port(self.child, self.port)

    def handled(self) -> int:
        """Entries in the history stream (read from Redis: it costs the helper nothing)."""
        return self.broker.xlen(Keys().history_stream)

    def find_measured(self, broker: redis.Redis) -> psutil.Process:
        roles = descendant_roles(self.child.ps, broker)
        helpers = [pid for pid, role in roles.items() if role == "bridge"]
        if len(helpers) != 1:
            raise RuntimeError(f"expected one bridge helper among {roles}")
        return psutil.Process(helpers[0])


class FlowerConsumer(Consumer):
    name = "flower"

    def __init__(self, broker_url: str, log_dir: Path, tag: str):
        super().__init__(broker_url, log_dir, tag)
        self.child = Child(f"{tag}-flower",
                           [sys.executable, "-m", "celery", "-b", broker_url, "flower",
                            f"--port={self.port}", "--address=127.0.0.1", "--logging=warning"],
                           log_dir=log_dir, cwd=log_dir)
        wait_for_port(self.child, self.port)

    def handled(self) -> int:
        return flower_events(fetch(self.port, "/metrics"))

    def find_measured(self, broker: redis.Redis) -> psutil.Process:
        return self.child.ps


# What kombu (our bridge helper) and Flower log when the broker drops their event
# subscription, e.g. Redis closing a subscriber over its pub/sub output buffer limit.
DISCONNECT_LINES = ("Connection to broker lost", "Failed to capture events")


def broker_disconnects(log_path: Path) -> int:
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return -1
    return sum(text.count(line) for line in DISCONNECT_LINES)


def cpu_of(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


# -- lag -------------------------------------------------------------------------------

def percentiles(values: List[float]) -> dict:
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)
    return {"p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1)}


def stream_lags(broker: redis.Redis, after_id: str, first_task: int, count: int,
                start_at: float, rate: float) -> dict:
    """Per event of the burst found in the history stream after `after_id`:
    the entry's time (its id's ms) less the event's timestamp."""
    stream, lags, seen, last = Keys().history_stream, [], set(), after_id
    while True:
        entries = broker.xrange(stream, min=f"({last}", count=10000)
        if not entries:
            break
        for entry_id, fields in entries:
            event = json.loads(fields[b"event"])
            step = STEP_OF_TYPE.get(event.get("type"))
            task = str(event.get("data", {}).get("task_id", ""))
            if step is None or not task.startswith(TASK_ID_PREFIX):
                continue
            index = 3 * (int(task[len(TASK_ID_PREFIX):], 16) - first_task) + step
            if 0 <= index < count and index not in seen:
                seen.add(index)
                lags.append(int(entry_id.split(b"-")[0]) / 1000 - (start_at + index / rate))
        last = entries[-1][0].decode()
    return {"events": len(seen), **percentiles(lags)}


def polled_lags(polls: List[tuple], base: int, count: int, start_at: float, rate: float) -> dict:
    """Lags from (time, handled) polls: the events counted between two polls
    were handled at times spread evenly between them (events in order)."""
    lags = []
    for (t0, c0), (t1, c1) in zip(polls, polls[1:]):
        c0, c1 = max(c0 - base, 0), min(c1 - base, count)
        for index in range(c0, c1):
            at = t0 + (t1 - t0) * (index - c0 + 1) / (c1 - c0)
            lags.append(at - (start_at + index / rate))
    return {"events": len(lags), **percentiles(lags)}


# -- the orchestrator ------------------------------------------------------------------

def log(message: str) -> None:
    print(message, flush=True)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class FlowerBench:
    def __init__(self, args):
        self.args = args
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_dir = args.json.parent / f"logs-{stamp}"
        self.redis: Optional[EmbeddedRedis] = None
        self.source: Optional[RpcChild] = None
        self.consumer: Optional[Consumer] = None
        self.recording: Optional[pyspy.Recording] = None
        self.next_task = 0

    def close(self) -> None:
        if self.recording is not None:
            self.recording.stop()
            self.recording = None
        if self.consumer is not None:
            self.consumer.stop()
            self.consumer = None
        if self.source is not None:
            self.source.stop(grace=10.0)
            self.source = None
        procs.stop_all()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def run(self) -> dict:
        args = self.args
        self.redis = EmbeddedRedis()
        self.redis.start()
        self.broker = redis.Redis.from_url(self.redis.url)
        self.redis_ps = psutil.Process(self.redis.process.pid)
        self.source = RpcChild("flower-source", [sys.executable, "-m", "bench.flower", "source",
                                                 self.redis.url], log_dir=self.log_dir, cwd=ROOT)
        result = {"meta": self.meta(), "config": {
            "rates": args.rates, "seconds": args.seconds, "rounds": args.rounds,
            "poll_s": args.poll, "catch_up_s": args.catch_up, "stall_s": STALL_S,
            "warm_up_tasks": WARM_UP_TASKS, "history_maxlen": HISTORY_MAXLEN,
            "workers": list(WORKERS), "root": str(args.root),
            "pubsub_buffer_limit": self.broker.config_get("client-output-buffer-limit"),
            "json": str(args.json), "md": str(args.md)}, "rounds": []}
        for index in range(args.rounds):
            order = list(CONSUMERS) if index % 2 == 0 else list(reversed(CONSUMERS))
            this = {"round": index + 1, "order": order, "cases": []}
            result["rounds"].append(this)
            for rate in args.rates:
                for name in order:
                    tag = f"r{index + 1}-{rate}-{name}"
                    try:
                        case = self.case(name, rate, tag)
                    except Exception as exc:  # one failed case must not lose the others'
                        log(f"   {tag} failed: {type(exc).__name__}: {exc}")
                        case = {"consumer": name, "rate": rate,
                                "error": f"{type(exc).__name__}: {exc}"}
                    this["cases"].append(case)
                    if "error" not in case:
                        log(f"   round {index + 1} {rate:>6} ev/s {name:6} {brief(case)}")
                    self.save(result)
        summarise(result)
        if args.profile:
            result["profiles"] = {name: self.profile(name)
                                  for name in args.profile_consumers.split(",")}
        result["meta"]["finished"] = now_iso()
        result["meta"]["load_average_at_end"] = [round(n, 2) for n in os.getloadavg()]
        return result

    def save(self, result: dict) -> None:
        self.args.json.parent.mkdir(parents=True, exist_ok=True)
        self.args.json.write_text(json.dumps(result, indent=1))

    def start(self, name: str, tag: str) -> Consumer:
        if name == "bridge":
            self.consumer = BridgeConsumer(self.redis.url, self.log_dir, tag, self.args.root)
        else:
            self.consumer = FlowerConsumer(self.redis.url, self.log_dir, tag)
        return self.consumer

    def tasks_from(self, tasks: int) -> int:
        first, self.next_task = self.next_task, self.next_task + tasks
        return first

    def wait_handled(self, consumer: Consumer, target: int, deadline: float,
                     polls: Optional[List[tuple]] = None) -> int:
        """Poll until `consumer` has handled `target` events, no progress for
        STALL_S s, or `deadline` (time.time()); returns the count."""
        handled, moved_at = -1, time.time()
        while True:
            now, count = time.time(), consumer.handled()
            if polls is not None:
                polls.append((now, count))
            if count != handled:
                handled, moved_at = count, now
            if handled >= target or now > deadline or now - moved_at > STALL_S:
                return handled
            if not consumer.child.alive():
                raise RuntimeError(f"{consumer.child.name} exited; log:\n"
                                   f"{consumer.child.log_tail()}")
            time.sleep(self.args.poll)

    def case(self, name: str, rate: float, tag: str, profile_into: Optional[Path] = None) -> dict:
        self.broker.flushall()
        consumer = self.start(name, tag)
        try:
            case = self.burst(consumer, rate, tag, profile_into)
        finally:
            if self.recording is not None:
                self.recording.stop()
                self.recording = None
            consumer.stop()
            self.consumer = None
        case["broker_disconnects"] = broker_disconnects(consumer.child.log_path)
        return case

    def warm_up(self, consumer: Consumer, tries: int = 5) -> int:
        """Send warm-up tasks until the consumer handles all of one batch (it
        may not be subscribed yet when its port opens); returns its count."""
        handled = self.wait_handled(consumer, 0, time.time() + 30)
        for _ in range(tries):
            first = self.tasks_from(WARM_UP_TASKS)
            self.source.call("prepare", timeout=60, first_task=first, tasks=WARM_UP_TASKS,
                             rate=300.0, lead=0.2)
            self.source.call("send", timeout=60)
            target = handled + 3 * WARM_UP_TASKS
            now = self.wait_handled(consumer, target, time.time() + 10)
            if now >= target:
                time.sleep(0.5)  # what else the warm-up causes (worker events) is in now
                return consumer.handled()
            handled = now
        raise RuntimeError(f"{consumer.name} did not handle a warm-up batch in {tries} tries")

    def burst(self, consumer: Consumer, rate: float, tag: str,
              profile_into: Optional[Path]) -> dict:
        args = self.args
        # Warm-up: the consumer must have processed these before the burst is measured.
        base = self.warm_up(consumer)
        measured = consumer.find_measured(self.broker)
        if profile_into is not None:
            self.recording = pyspy.Recording(measured.pid, profile_into / f"{tag}.txt",
                                             log_dir=self.log_dir, name=f"{tag}-py-spy")
        after_id = (self.broker.xrevrange(Keys().history_stream, count=1) or [[b"0-0"]])[0][0]
        tasks = max(1, round(rate * args.seconds / 3))
        count = 3 * tasks
        first = self.tasks_from(tasks)
        plan = self.source.call("prepare", timeout=600, first_task=first, tasks=tasks,
                                rate=rate, lead=args.idle + 0.3)
        start_at = plan["start_at"]
        # The idle window: from the end of the build to just before the burst, polled alike.
        idle_polls: List[tuple] = []
        idle_from = (time.time(), cpu_of(measured))
        while time.time() < start_at - 0.1:
            idle_polls.append((time.time(), consumer.handled()))
            time.sleep(args.poll)
        idle_to = (time.time(), cpu_of(measured))
        idle_rate = (idle_to[1] - idle_from[1]) / max(1e-3, idle_to[0] - idle_from[0])
        before = {"cpu": cpu_of(measured), "redis": redis_cpu(self.broker),
                  "machine": psutil.cpu_times()}
        polls: List[tuple] = [(start_at, base)]
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            sending = pool.submit(self.source.call, "send", timeout=args.seconds * 4 + 60)
            while not sending.done():
                polls.append((time.time(), consumer.handled()))
                time.sleep(args.poll)
            sent = sending.result()
        handled = self.wait_handled(consumer, base + count, sent["last_at"] + args.catch_up,
                                    polls)
        last_moved = next(t for t, c in polls if c == handled)
        after = {"cpu": cpu_of(measured), "redis": redis_cpu(self.broker),
                 "machine": psutil.cpu_times()}
        spent = time.time() - start_at
        lag = (stream_lags(self.broker, after_id.decode(), first, count, start_at, rate)
               if consumer.name == "bridge" else None)
        events = lag["events"] if lag else handled - base
        window = last_moved - start_at
        during = max(c for t, c in polls if t <= sent["last_at"]) - base
        cpu = after["cpu"] - before["cpu"]
        case = {"consumer": consumer.name, "rate": rate, "events": count, "plan": plan,
                "sent": sent, "handled": events, "lost": count - events,
                "kept_up_rate": round(during / sent["seconds"], 1) if sent["seconds"] else None,
                "throughput": round(events / window, 1) if window > 0 else None,
                "last_send_to_last_handled_s": round(last_moved - sent["last_at"], 3),
                "cpu_s": round(cpu, 3),
                "cpu_per_event_us": round(cpu / events * 1e6, 1) if events else None,
                "net_cpu_per_event_us": (round((cpu - idle_rate * spent) / events * 1e6, 1)
                                         if events else None),
                "idle_core_pct": round(idle_rate * 100, 2),
                "core_pct_in_burst": round(cpu / spent * 100, 1),
                "redis_cpu_us_per_event": round((after["redis"] - before["redis"]) / count * 1e6,
                                                1),
                "machine_busy": machine_busy(before["machine"], after["machine"]),
                "measured_pid": measured.pid, "polls": len(polls),
                "lag_polled": polled_lags(polls, base, count, start_at, rate)}
        case["lag"] = lag or case["lag_polled"]
        case["follows"] = (case["lost"] == 0 and case["lag"]["p99_ms"] is not None
                           and case["lag"]["p99_ms"] < LAG_GOAL_S * 1000)
        return case

    def profile(self, name: str) -> dict:
        args = self.args
        into = self.log_dir / "profiles"
        tag = f"profile-{name}-{args.profile_rate:g}"
        log(f"-- profile: {name} at {args.profile_rate:g} ev/s, py-spy on its process")
        case = self.case(name, args.profile_rate, tag, profile_into=into)
        files = [into / f"{tag}.txt"]
        summary = pyspy.summarise(f for f in files if f.exists())
        what = "the bridge helper" if name == "bridge" else "Flower's process"
        text = pyspy.format_summary(summary, f"{name}: {what} at {args.profile_rate:g} ev/s")
        log(text)
        return {"case": case, "files": [str(f) for f in files], "summary": summary,
                "text": text}

    def meta(self) -> dict:
        from importlib import metadata
        redis_server = subprocess.run([find_redis_server(), "--version"], capture_output=True,
                                      text=True, timeout=10).stdout.strip()
        return {"started": now_iso(), "label": self.args.label,
                "command": " ".join(["bench/.venv/bin/python -m bench.flower", *sys.argv[1:]]),
                "bench": checkout_state(ROOT),
                "server": checkout_state(self.args.root, SERVER_CODE),
                "cpus": os.cpu_count(), "python": platform.python_version(),
                "machine": platform.machine(), "kernel": platform.release(),
                "load_average_at_start": [round(n, 2) for n in os.getloadavg()],
                "packages": {name: metadata.version(name) for name in
                             ("flower", "celery", "kombu", "redis", "tornado", "prometheus_client",
                              "psutil")},
                "redis_server": redis_server}


def brief(case: dict) -> str:
    lag = case["lag"]
    return (f"handled {case['handled']:,}/{case['events']:,} (lost {case['lost']:,}), kept up "
            f"{case['kept_up_rate']:,} ev/s, throughput {case['throughput']:,} ev/s, last "
            f"{case['last_send_to_last_handled_s']} s after the last send; lag p50/p99/max "
            f"{lag['p50_ms']}/{lag['p99_ms']}/{lag['max_ms']} ms; CPU {case['cpu_per_event_us']} "
            f"µs/event (net {case['net_cpu_per_event_us']}), {case['core_pct_in_burst']} % of a "
            f"core; source sent {case['sent']['achieved_rate']:,}/s (worst "
            f"{case['sent']['worst_lag_ms']} ms late)")


# -- summary ---------------------------------------------------------------------------

FIELDS = ("handled", "lost", "broker_disconnects", "kept_up_rate", "throughput",
          "last_send_to_last_handled_s", "cpu_per_event_us", "net_cpu_per_event_us",
          "core_pct_in_burst", "redis_cpu_us_per_event")
LAG_FIELDS = ("p50_ms", "p99_ms", "max_ms")


def median(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 1) if values else None


def summarise(result: dict) -> None:
    """Per consumer and rate, the medians over the rounds and each round's
    figure; the highest rate each followed in every round."""
    cells: Dict[str, Dict[str, dict]] = {}
    for this in result["rounds"]:
        for case in this["cases"]:
            if "error" in case:
                continue
            cell = cells.setdefault(case["consumer"], {}).setdefault(str(case["rate"]), {
                key: [] for key in (*FIELDS, *LAG_FIELDS, "follows", "source_rate",
                                    "source_build_us", "source_send_us", "message_bytes")})
            for key in FIELDS:
                cell[key].append(case[key])
            for key in LAG_FIELDS:
                cell[key].append(case["lag"][key])
            cell["follows"].append(case["follows"])
            cell["source_rate"].append(case["sent"]["achieved_rate"])
            cell["source_build_us"].append(case["plan"]["build_cpu_us_per_event"])
            cell["source_send_us"].append(case["sent"]["send_cpu_us_per_event"])
            cell["message_bytes"].append(case["plan"]["message_bytes"])
    summary = {}
    for consumer, rates in cells.items():
        summary[consumer] = {}
        for rate, cell in rates.items():
            summary[consumer][rate] = {key: median(values) for key, values in cell.items()
                                       if key != "follows"}
            summary[consumer][rate]["follows_every_round"] = all(cell["follows"])
            summary[consumer][rate]["each"] = cell
        followed = [float(rate) for rate, cell in rates.items() if all(cell["follows"])]
        summary[consumer]["highest_followed_rate"] = max(followed, default=None)
    result["summary"] = summary
    failed = [c for this in result["rounds"] for c in this["cases"] if "error" in c]
    result["failed_cases"] = len(failed)


# -- output ----------------------------------------------------------------------------

def _f(value, digits: int = 0) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _cell(cell: dict, key: str, digits: int = 0) -> str:
    each = cell["each"][key]
    text = _f(cell[key], digits)
    return text if len(each) < 2 else f"{text} ({', '.join(_f(v, digits) for v in each)})"


def markdown(result: dict) -> str:
    config, meta, summary = result["config"], result["meta"], result["summary"]
    title = "## Our Celery event bridge beside Flower" + (
        f": {meta['label']}" if meta.get("label") else "")
    server = meta["server"]
    out = [title, "",
           "Goal (the issue *Celery at line rate*): *the bridge follows at least 10,000 Celery "
           "events/s on one core (at most 100 µs per event), with bounded lag (p99 from the "
           "Celery event's timestamp to the event in our stream under 1 s), beside Flower's "
           "figures from the same run.*", "",
           "**How.** One redis-server is the broker. A source process builds each burst with "
           "Celery's own `EventDispatcher` (per task `task-received` with args/kwargs reprs, "
           "`task-started`, `task-succeeded`, three fake worker hostnames that also send "
           "`worker-heartbeat` every 2 s), each event stamped with the time it is due, then "
           "PUBLISHes kombu's messages on Celery's event channel when due (pipelined, every "
           "millisecond): kombu's own one-PUBLISH-per-event last step is replaced so that the "
           "source can reach these rates on this machine. "
           f"Bursts of {config['seconds']:g} s at {', '.join(f'{r:,.0f}' for r in config['rates'])}"
           " events/s. The consumers run **one at a time** (2 cores: running both would measure "
           "their contention), each one freshly started for each burst, warmed up with "
           f"{config['warm_up_tasks']} tasks it must have processed: **bridge**, our server "
           "(`python run.py`, `NOTIFY_CELERY_EVENTS=1`), measured in its bridge helper process; "
           "**flower**, `celery -b BROKER flower` (Flower "
           f"{meta['packages']['flower']}), measured in its process. Handled = written to our "
           "history stream / counted in Flower's `flower_events_total` (task events). Lag: "
           "bridge, per event, exact: the stream entry's id (ms) less the event's `timestamp`; "
           f"flower, from polls of its `/metrics` every {config['poll_s']:g} s, the events "
           "counted between two polls taken as handled evenly between them (so ± a poll "
           "interval). Both consumers' `/metrics` are polled at that rate. CPU: user + system "
           "(psutil) of the measured process from the burst's start to its last event handled, "
           "per event handled; *net* subtracts its rate in the idle window just before the "
           "burst. *Kept up*: events handled during the burst / its length. *Throughput*: "
           "events handled / the time to the last one. *Subscription lost*: the times the "
           "consumer's log says the broker dropped its event subscription (Redis closes a "
           "subscriber that lets more than its pub/sub output buffer limit pile up). Lost: "
           "not handled within "
           f"{config['catch_up_s']:g} s of the last send, or after {config['stall_s']:g} s "
           f"without progress. {config['rounds']} round(s); per rate the consumers' order "
           "alternates from round to round; medians, each round in brackets.", ""]
    out += ["| rate ev/s | consumer | handled / lost (subscription lost) | kept up ev/s "
            "| throughput ev/s | last send → last handled s | lag p50 / p99 / max ms "
            "| CPU µs/event (net) "
            "| % of a core | follows |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for rate in config["rates"]:
        for consumer in CONSUMERS:
            cell = summary.get(consumer, {}).get(str(rate))
            if cell is None:
                out.append(f"| {rate:,.0f} | {consumer} | failed " + "| – " * 7 + "|")
                continue
            out.append(
                f"| {rate:,.0f} | {consumer} | {_cell(cell, 'handled')} / {_cell(cell, 'lost')} "
                f"({_cell(cell, 'broker_disconnects')}) "
                f"| **{_cell(cell, 'kept_up_rate')}** | {_cell(cell, 'throughput')} "
                f"| {_cell(cell, 'last_send_to_last_handled_s', 2)} "
                f"| {_f(cell['p50_ms'])} / **{_cell(cell, 'p99_ms')}** / {_f(cell['max_ms'])} "
                f"| **{_cell(cell, 'cpu_per_event_us')}** ({_f(cell['net_cpu_per_event_us'])}) "
                f"| {_f(cell['core_pct_in_burst'])} "
                f"| {'yes' if cell['follows_every_round'] else 'no'} |")
    out += [""] + verdict(result) + [""]
    out += ["The source and Redis in the same bursts (medians): the rate the source sent "
            "at, its CPU per event to build the burst ahead and to send it, the size of a "
            "message on the channel (kombu's envelope, JSON) and Redis's CPU per event (INFO "
            "cpu, burst start to last handled):", "",
            "| rate ev/s | consumer | source sent ev/s | build µs/event | send µs/event "
            "| message bytes | Redis µs/event |", "|---:|---|---:|---:|---:|---:|---:|"]
    for rate in config["rates"]:
        for consumer in CONSUMERS:
            cell = summary.get(consumer, {}).get(str(rate))
            if cell is not None:
                out.append(f"| {rate:,.0f} | {consumer} | {_f(cell['source_rate'])} "
                           f"| {_f(cell['source_build_us'], 1)} | {_f(cell['source_send_us'], 1)} "
                           f"| {_f(cell['message_bytes'])} "
                           f"| {_f(cell['redis_cpu_us_per_event'], 1)} |")
    out.append("")
    for name, profile in (result.get("profiles") or {}).items():
        case = profile["case"]
        out += [f"**py-spy, {name}** (one more burst at {case['rate']:,.0f} ev/s: "
                f"{case['cpu_per_event_us']} µs/event, lag p99 {case['lag']['p99_ms']} ms while "
                "profiled; by function, idle frames left out):", "", "```", profile["text"],
                "```", ""]
    out += [f"Machine: {meta['cpus']} CPUs ({meta['machine']}, Linux {meta['kernel']}), shared "
            f"and noisy; Python {meta['python']}, "
            + ", ".join(f"{k} {v}" for k, v in meta["packages"].items())
            + f", {meta['redis_server'].split(' sha=')[0]} (pub/sub output buffer limit "
            f"`{config['pubsub_buffer_limit'].get('client-output-buffer-limit')}`). Server code: "
            f"`{server['path']}` at `{server['commit']}` ({server['branch']})"
            + (f" with uncommitted changes to {', '.join(server['uncommitted'])}"
               if server["uncommitted"] else "")
            + f"; bench commit `{meta['bench']['commit']}`. Load average at start "
            f"{meta['load_average_at_start']}, at end {meta.get('load_average_at_end')}; "
            f"{meta['started']}. Command: `{meta['command']}`."
            + (f" {result['failed_cases']} case(s) failed (see the JSON)."
               if result["failed_cases"] else ""), ""]
    return "\n".join(out)


def verdict(result: dict) -> List[str]:
    summary, config, out = result["summary"], result["config"], []
    for consumer in CONSUMERS:
        if consumer not in summary:
            continue
        cells = [summary[consumer][str(r)] for r in config["rates"]
                 if str(r) in summary[consumer]]
        best = summary[consumer]["highest_followed_rate"]
        costs = [c["cpu_per_event_us"] for c in cells if c["cpu_per_event_us"]]
        capacity = [c["throughput"] for c in cells if c["throughput"]]
        line = (f"- **{consumer}**: highest rate followed (nothing lost, p99 lag < "
                f"{LAG_GOAL_S:g} s, every round): "
                + (f"**{best:,.0f} events/s**" if best else "**none of the rates**")
                + f"; CPU per event {_f(min(costs, default=None))}–"
                f"{_f(max(costs, default=None))} µs over the rates; highest throughput "
                f"{_f(max(capacity, default=None))} events/s.")
        if consumer == "bridge":
            line += (f" Goal ({GOAL_RATE:,} events/s, ≤ 100 µs per event): "
                     + ("met." if best and best >= GOAL_RATE and max(costs) <= 100
                        else "not met."))
        out.append(line)
    return out


# -- entry points ----------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.flower",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,5000,10000,20000",
                        help="Celery task events per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each burst")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--idle", type=float, default=2.0, help="seconds of the idle window")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between /metrics polls")
    parser.add_argument("--catch-up", type=float, default=60.0,
                        help="seconds after the last send a consumer may take")
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the checkout whose server (run.py) is started")
    parser.add_argument("--profile", action="store_true",
                        help="one more burst per --profile-consumers with py-spy on its process")
    parser.add_argument("--profile-consumers", default="bridge")
    parser.add_argument("--profile-rate", type=float, default=5000.0)
    parser.add_argument("--label", default="", help="said in the Markdown's title")
    parser.add_argument("--json", type=Path, default=OUT / "flower.json")
    parser.add_argument("--md", type=Path, default=BENCH / "RESULTS-flower.md")
    args = parser.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",")]
    if min(args.rates) <= 0 or args.seconds <= 0 or args.rounds < 1 or args.poll <= 0:
        parser.error("need rates > 0, --seconds > 0, --rounds >= 1, --poll > 0")
    if set(args.profile_consumers.split(",")) - set(CONSUMERS):
        parser.error(f"--profile-consumers: of {', '.join(CONSUMERS)}")
    args.root = args.root.resolve()
    args.json, args.md = args.json.resolve(), args.md.resolve()  # py-spy runs elsewhere
    return args


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`: every child is stopped


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["source"]:
        asyncio.run(source_main(argv[1]))
        return 0
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = parse_args(argv)
    step = FlowerBench(args)
    try:
        result = step.run()
    finally:
        step.close()
    step.save(result)
    args.md.write_text(markdown(result))
    for line in verdict(result):
        log(line)
    log(f"results: {args.json}; Markdown: {args.md}")
    return 0 if not result["failed_cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
