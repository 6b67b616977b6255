"""The Celery event bridge at line rate: the helper's CPU per event and the lag
it adds, at a range of Celery event rates.

    bench/.venv/bin/python -m bench.bridge_rate [--rates 2000,5000,10000,20000]
        [--seconds 5] [--sources 2] [--code PATH] [--profile RATE] [--json FILE]

The goal (the issue): at least 10,000 Celery events a second on one core, at
most 100 us of CPU per event in the bridge helper.

Per rate (`measure`, reusable on its own): a private redis-server (broker,
events and history), the bridge helper on its own (`bridge_helper.run_helper`
in a process of its own, always leading; no server process: nothing else
shares its core), and `--sources` source processes sending Celery's own events
with Celery's `EventDispatcher` as a worker with an event loop does
(`buffer_group=['task']`: task events go out as `task.multi` lists of up to 24,
flushed every 5 ms turn), each from three worker hostnames, with a
`worker-online` first and a `worker-heartbeat` every 2 s. Each task is a
`task-received` (args and kwargs reprs), a `task-started` and a
`task-succeeded` (`bench.bridge.task_event`), paced evenly over `--seconds`.

`--code` runs the helper from another checkout (PYTHONPATH): the same bench
measures the code before and after a change.

Figures: the helper's CPU (user + system, psutil) from the first event to the
last one's arrival in the history stream, less its idle rate measured just
before, per Celery event; events written; each event's lag from its Celery
`timestamp` (taken by the source just before `send`) to its stream id's
millisecond time (p50, p99, max); checks: every task event in the stream
exactly once (none missing, none twice) and in order per task. With
`--profile RATE`, py-spy samples the helper during that rate's burst and the
top frames by own time are printed (and its raw stacks kept in bench/out/).

Every child is stopped by PID. Loopback only.

    python -m bench.bridge_rate source BROKER_URL INDEX   # one event source (RPC child)
"""

import argparse
import asyncio
import collections
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import orjson
import psutil
import redis

from bench import procs
from bench.bridge import TASK_ID_PREFIX, task_event
from bench.procs import Child, RpcChild, serve_commands
from bench.systems import ROOT
from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.protocol.names import Keys

OUT = ROOT / "bench" / "out" / "bridge_rate"
HEARTBEAT_INTERVAL = 2.0
TURN = 0.005               # a source's loop turn: it flushes its buffered task events
STEPS = {"task_received": 0, "task_started": 1, "task_completed": 2}
PY_SPY = Path("/work/tools/benchvenv/bin/py-spy")

# The helper, run from the checkout under test: `run_helper` as the bridge's
# supervisor would start it, always leading, its pipe to the server replaced
# by JSON lines on stdout.
HELPER = """
import json, logging, sys, types
logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
from notify_server.celery_io.bridge_helper import BridgeOptions, run_helper
from notify_server.config import CeleryConfig, RedisConfig

class Pipe:
    def send(self, message):
        sys.stdout.write(json.dumps(message) + "\\n")
        sys.stdout.flush()

url, prefix = sys.argv[1:3]
options = BridgeOptions(celery=CeleryConfig(broker_url=url, events=True), broker_master=None,
                        redis=RedisConfig(url=url, prefix=prefix, history_maxlen=1_000_000),
                        replay_window=4.0)
run_helper(options, types.SimpleNamespace(value=1), Pipe())
"""


# -- the source ----------------------------------------------------------------------

class Source:
    """One process's share of the Celery events: tasks `index`, `index + n`, ..."""

    def __init__(self, broker_url: str, index: int):
        from celery import Celery
        self.app = Celery(f"bench-rate-source-{index}", broker=broker_url, set_as_current=False)
        self._connection = self.app.connection_for_write()
        self._dispatchers = [
            self.app.events.Dispatcher(self._connection, hostname=f"celery@rate-{index}-{n}",
                                       buffer_group=["task"])
            for n in range(3)]
        for dispatcher in self._dispatchers:
            dispatcher.send("worker-online", freq=HEARTBEAT_INTERVAL, sw_ident="py-celery",
                            sw_sys=platform.system(), active=0, processed=0)

    def run(self, tasks: List[int], rate: float, start_at: float) -> dict:
        """Send the 3 events of each task in `tasks`, event i due at
        `start_at` + i/rate (wall clock); returns each event's send time."""
        count = 3 * len(tasks)
        cpu_before = time.process_time()
        sent_at = []
        beat_at = start_at + HEARTBEAT_INTERVAL
        while time.time() < start_at:
            time.sleep(min(0.01, max(0.0, start_at - time.time())))
        i = 0
        while i < count:
            now = time.time()
            due = int((now - start_at) * rate) + 1
            while i < min(due, count):
                task, step = tasks[i // 3], i % 3
                kind, fields = task_event(task, step)
                sent_at.append(time.time())
                self._dispatchers[task % 3].send(kind, **fields)
                i += 1
            for dispatcher in self._dispatchers:
                dispatcher.flush()
            if now >= beat_at:
                beat_at += HEARTBEAT_INTERVAL
                for dispatcher in self._dispatchers:
                    dispatcher.send("worker-heartbeat", freq=HEARTBEAT_INTERVAL, active=0,
                                    processed=i // 3)
            time.sleep(TURN)
        elapsed = time.time() - start_at
        return {"sent": count, "seconds": round(elapsed, 3),
                "achieved_rate": round(count / elapsed, 1),
                "cpu_s": round(time.process_time() - cpu_before, 3), "sent_at": sent_at}


async def source_main(broker_url: str, index: int) -> None:
    source = Source(broker_url, index)

    async def handle(command: dict) -> dict:
        command.pop("cmd")
        return await asyncio.to_thread(source.run, **command)

    await serve_commands(handle)


# -- one rate ------------------------------------------------------------------------

class Helper:
    """The bridge helper as a child, its reports read from its stdout."""

    def __init__(self, code: Path, redis_url: str, prefix: str, log_dir: Path):
        self.child = Child("bridge-helper", [sys.executable, "-c", HELPER, redis_url, prefix],
                           log_dir=log_dir, cwd=code, stdout=subprocess.PIPE,
                           env={"PYTHONPATH": str(code)})
        self.ready = threading.Event()
        self.counts: Dict[str, int] = {}
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.child.process.stdout:
            message = json.loads(line)
            if message[0] == "ready":
                self.ready.set()
            elif message[0] == "table":
                self.counts = message[2]


def quantile(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def read_stream(client: redis.Redis, key: str):
    """Every entry of the stream: (id ms, message), oldest first."""
    start = "-"
    while True:
        batch = client.xrange(key, min=start, count=10_000)
        for entry_id, fields in batch:
            yield int(entry_id.split(b"-")[0]), orjson.loads(fields[b"event"])
        if len(batch) < 10_000:
            return
        start = "(" + batch[-1][0].decode()


def measure(rate: float, seconds: float = 5.0, *, sources: int = 2, code: Path = ROOT,
            log_dir: Path = OUT, profile: Optional[Path] = None) -> dict:
    """Run `rate` Celery events a second for `seconds` through a fresh helper
    of the checkout `code`; returns its figures (see the module docstring)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    tasks = int(rate * seconds) // 3
    server = EmbeddedRedis()
    server.start()
    prefix = f"rate{int(rate)}"
    history = Keys(prefix).history_stream
    client = redis.Redis.from_url(server.url)
    started: List[Child] = []
    try:
        helper = Helper(code, server.url, prefix, log_dir)
        started.append(helper.child)
        if not helper.ready.wait(60):
            raise RuntimeError(f"the helper never got ready; log:\n{helper.child.log_tail()}")
        children = [RpcChild(f"source-{index}", [sys.executable, "-m", "bench.bridge_rate",
                                                   "source", server.url, str(index)],
                             log_dir=log_dir, cwd=ROOT) for index in range(sources)]
        started.extend(children)
        time.sleep(1.0)                               # the worker-online events written
        idle_before, idle_at = helper.child.cpu_seconds(), time.monotonic()
        time.sleep(2.0)
        idle_rate = (helper.child.cpu_seconds() - idle_before) / (time.monotonic() - idle_at)
        base = client.xlen(history)

        start_at = time.time() + 0.5
        results: List[dict] = [{} for _ in children]

        def drive(index: int) -> None:
            results[index] = children[index].call(
                "run", timeout=seconds * 4 + 60, tasks=list(range(index, tasks, sources)),
                rate=rate / sources, start_at=start_at)
        threads = [threading.Thread(target=drive, args=(index,)) for index in range(sources)]
        for thread in threads:
            thread.start()
        while time.time() < start_at:
            time.sleep(0.001)
        cpu_start, t_start = helper.child.cpu_seconds(), time.monotonic()
        redis_cpu_start = redis_cpu_end = _cpu(server.process.pid)
        client.config_resetstat()
        spy = None
        if profile is not None:
            spy = subprocess.Popen([str(PY_SPY), "record", "--nonblocking", "-f", "raw", "-r",
                                    "200", "-o", str(profile), "--pid", str(helper.child.pid)],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        expected = 3 * tasks
        cpu_end, t_end, last, still_since = cpu_start, t_start, -1, time.monotonic()
        while True:
            written = client.xlen(history) - base
            now = time.monotonic()
            if written != last:
                last, still_since = written, now
                cpu_end, t_end = helper.child.cpu_seconds(), now
                redis_cpu_end = _cpu(server.process.pid)
            if written >= expected or (now - still_since > 5.0 and
                                       not any(t.is_alive() for t in threads)):
                break
            time.sleep(0.02)
        if spy is not None:
            spy.send_signal(2)
            spy.wait(timeout=30)
        for thread in threads:
            thread.join()
        counts = dict(helper.counts)
        calls = client.info("commandstats")
        script_us = calls.get("cmdstat_evalsha", {}).get("usec_per_call")

        seen = collections.Counter()
        arrival: Dict[tuple, int] = {}
        order_violations = 0
        last_step: Dict[int, int] = {}
        for at_ms, message in read_stream(client, history):
            step = STEPS.get(message.get("type"))
            task_ref = (message.get("data") or {}).get("task_id") or ""
            if step is None or not task_ref.startswith(TASK_ID_PREFIX):
                continue
            task = int(task_ref[len(TASK_ID_PREFIX):], 16)
            seen[(task, step)] += 1
            arrival.setdefault((task, step), at_ms)
            if last_step.get(task, -1) >= step:
                order_violations += 1
            last_step[task] = step
        sent_at: Dict[tuple, float] = {}
        for index, result in enumerate(results):
            mine = list(range(index, tasks, sources))
            for i, at in enumerate(result["sent_at"]):
                sent_at[(mine[i // 3], i % 3)] = at
        lags = [arrival[key] / 1000 - at for key, at in sent_at.items() if key in arrival]
        by_second = collections.defaultdict(list)
        for key, at in sent_at.items():
            if key in arrival:
                by_second[int(at - start_at)].append(arrival[key] / 1000 - at)
        cpu = cpu_end - cpu_start - idle_rate * (t_end - t_start)
        return {
            "rate": rate, "events": expected, "sources": sources, "code": str(code),
            "achieved_rate": round(sum(r["achieved_rate"] for r in results), 1),
            "written": len(seen), "missing": expected - len(seen),
            "twice": sum(1 for n in seen.values() if n > 1), "order_violations": order_violations,
            "helper_counts": counts, "helper_cpu_s": round(cpu, 3),
            "helper_idle_share": round(idle_rate, 4),
            "cpu_us_per_event": round(cpu / expected * 1e6, 1),
            "helper_core_share": round(cpu / max(1e-9, t_end - t_start), 3),
            "source_cpu_s": round(sum(r["cpu_s"] for r in results), 3),
            "redis_cpu_us_per_event": round((redis_cpu_end - redis_cpu_start) / expected * 1e6, 1),
            "redis_script_us_per_call": script_us,
            "lag_p50_ms": _ms(quantile(lags, 0.50)), "lag_p99_ms": _ms(quantile(lags, 0.99)),
            "lag_max_ms": _ms(max(lags) if lags else None),
            "lag_p99_ms_by_second": [_ms(quantile(by_second[n], 0.99)) for n in sorted(by_second)],
        }
    finally:
        for child in reversed(started):
            child.stop(grace=5.0)
        client.close()
        server.stop()


def _cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


def _ms(seconds: Optional[float]) -> Optional[float]:
    return None if seconds is None else round(seconds * 1000, 1)


def top_frames(raw: Path, count: int = 10) -> List[tuple]:
    """(share of samples, frame) of the `count` frames with the most own
    time in py-spy's raw (collapsed) output: the last frame of each stack."""
    own: "collections.Counter[str]" = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack:
            continue
        own[stack.split(";")[-1]] += int(samples)
        total += int(samples)
    return [(n / total, frame) for frame, n in own.most_common(count)]


COLUMNS = ("rate", "achieved_rate", "events", "written", "missing", "twice", "order_violations",
           "cpu_us_per_event", "helper_core_share", "redis_cpu_us_per_event",
           "redis_script_us_per_call", "lag_p50_ms", "lag_p99_ms", "lag_max_ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="2000,5000,10000,20000")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sources", type=int, default=2)
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--profile", type=float, help="py-spy the helper at this rate")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    try:
        for rate in (float(r) for r in args.rates.split(",")):
            profile = OUT / f"pyspy-{int(rate)}.txt" if rate == args.profile else None
            row = measure(rate, args.seconds, sources=args.sources, code=args.code.resolve(),
                          profile=profile)
            rows.append(row)
            print(" | ".join(f"{name}={row[name]}" for name in COLUMNS), flush=True)
            if profile is not None and profile.exists():
                for share, frame in top_frames(profile):
                    print(f"  {share:6.1%}  {frame}")
    finally:
        procs.stop_all()
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(str(row[name]) for name in COLUMNS) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "source":
        asyncio.run(source_main(sys.argv[2], int(sys.argv[3])))
    else:
        main()
