"""Fan-out benchmark: notify-server against the seed's own stack, on loopback.

    bench/run.sh [--quick] [--systems a,b] [--no-pin] ...

Starts a redis-server, each system in turn, a load client process (M
WebSocket connections) and a publisher process (K events at a set rate through
the system's worker-side path); measures delivery latency to the first and the
last client, losses, duplicates, server CPU and memory; finds the saturation
rate; measures our event-loop lag with a real Celery worker polling; profiles
our server with py-spy. Writes bench/out/run-*.json and, in full mode,
bench/results.json, bench/RESULTS.md and bench/latency.png.

Every child is stopped by PID when the run ends, also on error or Ctrl-C.
"""

import argparse
import datetime
import json
import math
import os
import platform
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Optional

import redis

from bench import procs, report, scoped
from bench.procs import Child, RpcChild
from bench.stats import (RateSearch, histogram_delta, histogram_quantile,
                         parse_prometheus_histogram)
from bench.systems import ROOT, SYSTEMS
from notify_server.dev.embedded_redis import EmbeddedRedis, find_redis_server

BENCH = ROOT / "bench"
LAG_METRIC = "notify_event_loop_lag_seconds"

FULL = {"sizes": [100, 1000, 5000, 10000], "steady_s": 10.0, "extra_s": 6.0, "step_s": 5.0,
        "saturation_sizes": [1000], "saturation_steps": 9, "lag_s": 20.0, "profile_s": 10.0,
        "budget_s": 1020.0}
QUICK = {"sizes": [100, 1000], "steady_s": 5.0, "extra_s": 3.0, "step_s": 3.0,
         "saturation_sizes": [1000], "saturation_steps": 6, "lag_s": 8.0, "profile_s": 5.0,
         "budget_s": 420.0}
STEADY_RATE = 20.0
CPU_RATE = 50.0            # the "CPU per delivery at 1,000 clients, 50 ev/s" target
LOW_RATE = 1.0             # the "10,000 clients at 1 ev/s" target
KEPT_UP_P99_MS = 1000.0    # a step keeps up: nothing lost, p99 to the last client under 1 s,
FALLING_BEHIND_MS = 250.0  # and latency not growing by more than this from its first to last fifth
SATURATION_START = 50.0


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class Bench:
    def __init__(self, args, mode: dict):
        self.args, self.mode = args, mode
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.out_dir = BENCH / "out"
        self.log_dir = self.out_dir / f"logs-{stamp}"
        self.json_path = self.out_dir / f"run-{stamp}.json"
        self.started = time.monotonic()
        self.deadline = self.started + args.budget if args.budget else self.started + mode["budget_s"]
        pin = args.pin and (os.cpu_count() or 1) >= 2
        self.server_cpus = {0} if pin else None
        self.helper_cpus = {1} if pin else None
        self.seq = 0
        self.redis: Optional[EmbeddedRedis] = None
        self.client: Optional[RpcChild] = None
        self.results = {"meta": {}, "systems": {}, "loop_lag": None, "profile": None}

    # -- the run ---------------------------------------------------------------

    def run(self) -> dict:
        fd_limit = raise_fd_limit()
        self.results["meta"] = machine_info(self.args, self.mode, fd_limit, self.server_cpus,
                                            self.helper_cpus)
        self.redis = EmbeddedRedis()
        self.redis.start()
        if self.helper_cpus:
            os.sched_setaffinity(self.redis.process.pid, self.helper_cpus)
        self.redis_ps = procs.psutil.Process(self.redis.process.pid)
        self.flush = redis.Redis.from_url(self.redis.url)
        self.client = RpcChild("loadclient", [sys.executable, "-m", "bench.loadclient"],
                               log_dir=self.log_dir, cwd=ROOT, cpus=self.helper_cpus)
        for name in self.args.systems:
            log(f"== {name}")
            self.system(SYSTEMS[name], self.results["systems"].setdefault(name, {}))
            self.save()
        if "notify-server" in self.args.systems and not self.args.skip_lag:
            log("== event-loop lag with a Celery worker polling")
            self.results["loop_lag"] = self.guarded(self.loop_lag)
            self.save()
        if "notify-server" in self.args.systems and not self.args.skip_profile:
            log("== py-spy profile of notify-server at its saturation rate")
            self.results["profile"] = self.guarded(self.profile)
            self.save()
        self.results["meta"]["load_average_at_end"] = [round(n, 2) for n in os.getloadavg()]
        self.results["meta"]["duration_s"] = round(time.monotonic() - self.started, 1)
        self.results["meta"]["finished"] = now_iso()
        return self.results

    def guarded(self, phase) -> dict:
        try:
            return phase()
        except Exception as exc:  # one failed phase must not lose the others' figures
            log(f"   failed: {type(exc).__name__}: {exc}")
            return {"error": f"{type(exc).__name__}: {exc}"}

    def close(self) -> None:
        procs.stop_all()
        if self.redis is not None:
            self.redis.stop()

    def save(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(self.results, indent=1))

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    # -- one system -------------------------------------------------------------

    def system(self, system, result: dict) -> None:
        argv = [a.replace("{redis}", self.redis.url) for a in system.publisher]
        publisher = RpcChild(f"publisher-{system.name}",
                             [sys.executable, "-m", "bench.publisher", *argv],
                             log_dir=self.log_dir, cwd=ROOT,
                             env={**system.publisher_env, "REDIS_URL": self.redis.url},
                             cpus=self.helper_cpus)
        result.update(description=system.description, publisher_path=system.path_note,
                      sizes={}, saturation={}, stopped_at=None)
        try:
            for size in self.mode["sizes"]:
                if self.time_left() < 60:
                    result["stopped_at"] = f"time budget exhausted before M={size}"
                    break
                log(f"-- {system.name} M={size}")
                outcome = self.guarded(lambda: self.size(system, publisher, size))
                result["sizes"][str(size)] = outcome
                self.save()
                if not outcome.get("kept_up"):
                    result["stopped_at"] = (f"could not keep up at M={size} "
                                            f"({outcome.get('why', 'see its runs')}); larger sizes skipped")
                    log(f"   {result['stopped_at']}")
                    break
            for size in self.mode["saturation_sizes"]:
                measured = result["sizes"].get(str(size)) or {}
                if "runs" in measured and self.time_left() > 45:
                    log(f"-- {system.name} saturation at M={size}")
                    start = saturation_start(measured["runs"].get("steady_20"), size)
                    result["saturation"][str(size)] = self.guarded(
                        lambda: self.saturation(system, publisher, size, start))
                    self.save()
        finally:
            publisher.stop()

    def start_server(self, system, tag: str, env=None):
        self.flush.flushall()
        server, url = system.start(self.redis.url, self.log_dir, tag, cpus=self.server_cpus, env=env)
        time.sleep(1.0)
        return server, url

    def warm_up(self, url: str) -> None:
        """One throw-away socket: pays any lazy start-up cost (Django loads its
        application on the first request) before anything is measured."""
        self.client.call("connect", timeout=60, url=url, count=1, deadline_s=30.0)
        self.client.call("close", timeout=60)
        time.sleep(0.5)

    def connect(self, url: str, size: int, warm: bool = True) -> dict:
        """Open `size` sockets from 127.0.0.2.., one source address per 5,000."""
        if warm:
            self.warm_up(url)
        sources = [f"127.0.0.{2 + n}" for n in range(max(1, math.ceil(size / 5000)))]
        return self.client.call("connect", timeout=self.args.connect_timeout + 30, url=url,
                                count=size, concurrency=200, sources=sources,
                                deadline_s=self.args.connect_timeout)

    def size(self, system, publisher, size: int) -> dict:
        server, url = self.start_server(system, f"{system.name}-{size}")
        try:
            self.warm_up(url)
            rss_idle = server.rss()
            connect = self.connect(url, size, warm=False)
            log(f"   connected {connect['connected']}/{size} in {connect['seconds']} s "
                f"({connect['per_s']}/s)")
            outcome = {"connect": connect, "server_pid": server.pid}
            if connect["connected"] < size:
                outcome.update(kept_up=False, why=f"{connect['failed']} connections failed")
                return outcome
            time.sleep(1.0)
            idle = outcome["idle_server_cpu_per_s"] = idle_cpu_per_s(server, 3.0)
            rss_connected = server.rss()
            outcome["rss"] = {"idle_0_bytes": rss_idle, f"idle_{size}_bytes": rss_connected,
                              "per_connection_bytes": round((rss_connected - rss_idle) / size, 1)}
            self.step(server, publisher, size, rate=10.0, seconds=0.5, drain=5.0)  # warm-up
            runs = outcome["runs"] = {}
            for label, rate, seconds in self.plan(size):
                run = runs[label] = self.step(server, publisher, size, rate, seconds, drain=5.0,
                                              idle_cpu=idle)
                log(f"   {label}: {brief(run)}")
                if not run["kept_up"]:
                    # Its backlog would spill into the next run: stop at this size.
                    outcome["why"] = f"{label}: {run['why']}"
                    break
            # Larger sizes are worth running while the 20 ev/s run keeps up.
            outcome["kept_up"] = bool(runs.get("steady_20", {}).get("kept_up"))
            outcome["server_alive"] = server.alive()
            return outcome
        finally:
            self.client.call("close", timeout=60)
            server.stop()

    def plan(self, size: int):
        steady, extra = self.mode["steady_s"], self.mode["extra_s"]
        runs = []
        if size >= 10000:
            runs.append(("low_rate_1", LOW_RATE, steady))
        runs.append(("steady_20", STEADY_RATE, steady))
        if size == 1000:
            runs.append(("cpu_50", CPU_RATE, extra))
        return runs

    def step(self, server: Child, publisher: RpcChild, size: int, rate: float, seconds: float,
             drain: float, idle_cpu: Optional[float] = None) -> dict:
        """Publish `rate` x `seconds` events and measure their delivery to `size` clients.

        `idle_cpu` (CPU seconds per second the server spends with its sockets
        idle) gives the net CPU per delivery: the step's CPU less that idle
        work over the step's duration."""
        self.client.call("drain", timeout=30, quiet=0.5, timeout_s=10.0)
        count = max(2, round(rate * seconds))
        base, self.seq = self.seq, self.seq + count
        self.client.call("begin", timeout=30, base=base, count=count)
        cpu_server, cpu_redis, started = server.cpu_seconds(), redis_cpu(self.redis_ps), time.monotonic()
        cpu_children = server.children_cpu_seconds()
        published = publisher.call("run", timeout=seconds * 4 + 60, base=base, count=count, rate=rate)
        waited = self.client.call("wait", timeout=drain + 60, total=count * size, timeout_s=drain,
                                  quiet=min(drain, 3.0))
        server_cpu = server.cpu_seconds() - cpu_server if server.alive() else None
        children_cpu = server.children_cpu_seconds() - cpu_children if server.alive() else None
        elapsed = time.monotonic() - started
        redis_used = redis_cpu(self.redis_ps) - cpu_redis
        result = self.client.call("report", timeout=60)
        result.update(rate=rate, seconds=seconds, publisher=published, waited=waited,
                      server_cpu_s=round(server_cpu, 3) if server_cpu is not None else None,
                      redis_cpu_s=round(redis_used, 3),
                      server_children_cpu_s=round(children_cpu, 3) if children_cpu is not None else None)
        if server_cpu is not None and result["deliveries"]:
            result["server_cpu_us_per_delivery"] = round(server_cpu / result["deliveries"] * 1e6, 3)
            if idle_cpu is not None:
                net = max(0.0, server_cpu - idle_cpu * elapsed)
                result["server_cpu_us_per_delivery_net"] = round(net / result["deliveries"] * 1e6, 3)
        result["load_average_1m"] = round(os.getloadavg()[0], 2)
        result["kept_up"], result["why"] = judge(result)
        window = result["window_s"] or seconds
        result["client_cpu_share"] = round(result["client_cpu_s"] / window, 2)
        result["client_bound"] = result["client_cpu_share"] >= 0.85
        return result

    def saturation(self, system, publisher, size: int, start: float) -> dict:
        search = RateSearch(start, max_steps=self.mode["saturation_steps"])
        steps = []
        server, url = self.start_server(system, f"{system.name}-sat{size}")
        try:
            self.connect(url, size)
            self.step(server, publisher, size, rate=10.0, seconds=0.5, drain=5.0)
            while (rate := search.next_rate()) is not None and self.time_left() > 30:
                outcome = self.step(server, publisher, size, rate, self.mode["step_s"], drain=2.0)
                search.record(rate, outcome["kept_up"])
                steps.append(outcome)
                log(f"   {rate:g} ev/s: {brief(outcome)}")
                if not outcome["kept_up"]:
                    # A backlog would spill into the next step: start afresh.
                    self.client.call("close", timeout=60)
                    server.stop()
                    server, url = self.start_server(system, f"{system.name}-sat{size}")
                    self.connect(url, size)
                    self.step(server, publisher, size, rate=10.0, seconds=0.5, drain=5.0)
        finally:
            self.client.call("close", timeout=60)
            server.stop()
        best = next((s for s in steps if search.best is not None and s["rate"] == search.best), None)
        return {"best_rate": search.best, "lowest_failing_rate": search.lowest_failure,
                "best_deliveries_per_s": best["deliveries_per_s"] if best else None,
                "best_p99_ms": best["latency_last_client"]["p99_ms"] if best else None,
                "best_server_cpu_us_per_delivery": best.get("server_cpu_us_per_delivery") if best else None,
                "steps": steps}

    # -- notify-server only ----------------------------------------------------

    def loop_lag(self) -> dict:
        """Our loop lag at 1,000 clients and 20 ev/s: first with no Celery worker
        (each poll waits out its inspect timeout), then with a real worker
        running demo tasks, so the cost of polling shows against a reference."""
        size = 1000
        server, url = self.start_server(SYSTEMS["notify-server"], "lag-notify-server")
        helpers = []
        try:
            publisher = RpcChild("publisher-lag", [sys.executable, "-m", "bench.publisher", "lua",
                                                   self.redis.url],
                                 log_dir=self.log_dir, cwd=ROOT, cpus=self.helper_cpus)
            helpers.append(publisher)
            self.connect(url, size)
            time.sleep(3.0)
            metrics_url = url.replace("ws://", "http://").replace("/ws/tasks/", "/metrics")
            result = {"connections": size, "rate": STEADY_RATE, "seconds": self.mode["lag_s"],
                      "poll_interval_s": 2.0,
                      "celery_worker": "celery -A notify_server.dev.demo worker --concurrency 2, with "
                                       "`python -m notify_server.dev.demo produce` submitting tasks"}
            result["without_worker"] = self.lag_window(server, publisher, size, metrics_url)
            log(f"   no worker: {lag_brief(result['without_worker'])}")
            env = {"REDIS_URL": self.redis.url}
            worker = Child("lag-celery-worker",
                           [sys.executable, "-m", "celery", "-A", "notify_server.dev.demo", "worker",
                            "--loglevel", "INFO", "--concurrency", "2", "--hostname", "bench@%h",
                            "--without-gossip", "--without-mingle"],
                           log_dir=self.log_dir, cwd=ROOT, env=env, cpus=self.helper_cpus)
            helpers.append(worker)
            wait_for_log(worker, "ready.", 60)
            helpers.append(Child("lag-demo-producer", [sys.executable, "-m", "notify_server.dev.demo",
                                                       "produce"],
                                 log_dir=self.log_dir, cwd=ROOT, env=env, cpus=self.helper_cpus))
            time.sleep(3.0)  # the poller finds the worker; tasks start
            result["with_worker"] = self.lag_window(server, publisher, size, metrics_url)
            log(f"   with worker: {lag_brief(result['with_worker'])}")
            measured = result["with_worker"]
            if measured.get("metrics"):
                result["loop_lag_p99_ms"] = measured["metrics"]["p99_ms"]
                result["loop_lag_source"] = "metrics"
            else:
                result["TODO"] = (f"the server exposes no {LAG_METRIC} histogram on GET /metrics "
                                  "yet; loop_lag_p99_ms is the p99 of a ping/pong round trip on one "
                                  "socket every 20 ms, an upper bound of the loop lag (it adds "
                                  "loopback and client time, and waits behind broadcasts)")
                result["loop_lag_p99_ms"] = measured["ping_rtt"]["rtt"]["p99_ms"]
                result["loop_lag_source"] = "ping_rtt"
            return result
        finally:
            self.client.call("close", timeout=60)
            for helper in reversed(helpers):
                helper.stop()
            server.stop()

    def lag_window(self, server: Child, publisher: RpcChild, size: int, metrics_url: str) -> dict:
        before = scrape(metrics_url)
        self.client.call("probe_start", timeout=30, interval=0.02)
        run = self.step(server, publisher, size, STEADY_RATE, self.mode["lag_s"], drain=5.0)
        probe = self.client.call("probe_stop", timeout=30)
        after = scrape(metrics_url)
        window = {"ping_rtt": probe, "run": run}
        if after is not None:
            delta = histogram_delta(before, after)
            p99 = histogram_quantile(delta["buckets"], 0.99)
            window["metrics"] = {
                "source": f"GET /metrics {LAG_METRIC}", "observations": delta["count"],
                "p99_ms": round(p99 * 1000, 3) if p99 is not None else None,
                "mean_ms": round(delta["sum"] / delta["count"] * 1000, 3) if delta["count"] else None}
        return window

    def profile(self) -> dict:
        size = 1000
        system = SYSTEMS["notify-server"]
        saturation = self.results["systems"].get("notify-server", {}).get("saturation", {})
        rate = (saturation.get(str(size)) or {}).get("best_rate") or 100.0
        seconds = self.mode["profile_s"]
        server, url = self.start_server(system, "profile-notify-server")
        publisher = RpcChild("publisher-profile", [sys.executable, "-m", "bench.publisher", "lua",
                                                   self.redis.url],
                             log_dir=self.log_dir, cwd=ROOT, cpus=self.helper_cpus)
        try:
            self.connect(url, size)
            self.step(server, publisher, size, rate=10.0, seconds=0.5, drain=5.0)
            count = round(rate * (2 * seconds + 4))
            base, self.seq = self.seq, self.seq + count
            self.client.call("begin", timeout=30, base=base, count=count)
            load = threading.Thread(target=publisher.call, args=("run",),
                                    kwargs={"timeout": 4 * seconds + 60, "base": base,
                                            "count": count, "rate": rate})
            load.start()
            time.sleep(1.0)
            raw, svg = self.out_dir / "profile.txt", self.out_dir / "profile.svg"
            for fmt, path in (("raw", raw), ("flamegraph", svg)):
                spy = Child(f"py-spy-{fmt}", [str(Path(sys.executable).parent / "py-spy"), "record",
                                              "--pid", str(server.pid), "--duration", str(int(seconds)),
                                              "--rate", "200", "--nonblocking", "--format", fmt,
                                              "-o", str(path)],
                            log_dir=self.log_dir, cwd=ROOT, cpus=self.helper_cpus)
                spy.process.wait(timeout=seconds + 60)
                spy.stop()
            load.join(timeout=4 * seconds + 60)
            self.client.call("wait", timeout=60, total=count * size, timeout_s=5.0, quiet=3.0)
            run = self.client.call("report", timeout=60)
            return {"rate": rate, "connections": size, "seconds_each": seconds,
                    "flamegraph": str(svg.relative_to(ROOT)), "raw": str(raw.relative_to(ROOT)),
                    "run": {k: run[k] for k in ("deliveries", "lost", "latency_last_client",
                                                "deliveries_per_s")},
                    "hot_spots": report.hot_spots(raw) if raw.exists() else None}
        finally:
            self.client.call("close", timeout=60)
            publisher.stop()
            server.stop()


# -- helpers --------------------------------------------------------------------

def saturation_start(steady: dict, size: int) -> float:
    """Where the rate search begins: 50 ev/s, or just under what a system that
    could not keep up with 20 ev/s delivered then (so it needs few failing steps)."""
    if not steady or steady["kept_up"] or not steady.get("deliveries_per_s"):
        return SATURATION_START
    return max(1.0, round(0.8 * steady["deliveries_per_s"] / size, 1))


def judge(result: dict):
    """Did a step keep up? No loss, no duplicate, p99 under 1 s, the publisher on
    schedule, and a latency that does not keep growing (a backlog that grows by
    a quarter second within a step of a few seconds is not a sustainable rate)."""
    p99 = result["latency_last_client"]["p99_ms"]
    achieved = result["publisher"]["achieved_rate"]
    if result["lost"]:
        return False, f"{result['lost']} of {result['expected_deliveries']} deliveries missing"
    if result["duplicated"]:
        return False, f"{result['duplicated']} duplicates"
    if p99 is None or p99 > KEPT_UP_P99_MS:
        return False, f"p99 to the last client {p99} ms"
    if achieved < 0.95 * result["rate"]:
        return False, f"publisher reached only {achieved} ev/s (publisher-bound)"
    growth = result["latency_growth_ms"]
    if growth is not None and growth > FALLING_BEHIND_MS:
        return False, f"falling behind: latency grew {growth:.0f} ms over the step"
    return True, None


def brief(result: dict) -> str:
    latency = result["latency_last_client"]
    return (f"p50 {latency['p50_ms']} p99 {latency['p99_ms']} max {latency['max_ms']} ms, "
            f"{result['deliveries_per_s']} deliveries/s, lost {result['lost']}, "
            f"dup {result['duplicated']}, server CPU {result['server_cpu_s']} s, "
            f"client CPU {result['client_cpu_s']} s")


def idle_cpu_per_s(server: Child, seconds: float) -> float:
    """CPU seconds per second the server spends while its clients are idle."""
    before = server.cpu_seconds()
    time.sleep(seconds)
    return round((server.cpu_seconds() - before) / seconds, 4)


def lag_brief(window: dict) -> str:
    rtt = window["ping_rtt"]["rtt"]
    metric = window.get("metrics") or {}
    return (f"ping p50 {rtt['p50_ms']} p99 {rtt['p99_ms']} ms; loop-lag metric p99 "
            f"{metric.get('p99_ms', 'n/a')} ms; events p99 "
            f"{window['run']['latency_last_client']['p99_ms']} ms")


def redis_cpu(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def scrape(url: str) -> Optional[dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return None
    return parse_prometheus_histogram(text, LAG_METRIC)


def wait_for_log(child: Child, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in child.log_path.read_text(errors="replace"):
        if not child.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{child.name} never logged {text!r}:\n{child.log_tail()}")
        time.sleep(0.2)


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def machine_info(args, mode, fd_limit, server_cpus, helper_cpus) -> dict:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor())
    packages = {}
    for name in ("tornado", "redis", "orjson", "celery", "Django", "channels", "channels-redis",
                 "daphne", "Twisted", "picows", "uvloop", "psutil", "py-spy"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    server_binary = find_redis_server()
    return {"git": git_state(), 
        "started": now_iso(), "mode": "quick" if args.quick else "full",
        "load_average_at_start": [round(n, 2) for n in os.getloadavg()],
        "command": " ".join(["bench/run.sh", *sys.argv[1:]]),
        "cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
        "memory_gb": round(procs.psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(), "packages": packages,
        "redis_server": server_binary, "fd_limit": fd_limit,
        "pinning": {"server": sorted(server_cpus) if server_cpus else None,
                    "redis_client_publisher": sorted(helper_cpus) if helper_cpus else None},
        "plan": mode, "steady_rate": STEADY_RATE,
    }


def git_state() -> dict:
    """The commit measured, and whether the server's code had uncommitted changes."""
    def git(*argv):
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return None
    dirty = git("status", "--porcelain", "--", "notify_server", "handlers", "run.py", "settings.py",
                "requirements.txt")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "server_code_uncommitted": sorted(line[3:] for line in (dirty or "").splitlines())}


def log(message: str) -> None:
    print(message, flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="M=100 and 1000, short steps")
    parser.add_argument("--systems",
                        default=",".join(n for n in SYSTEMS if n != "notify-server-base"),
                        help=f"comma-separated, of: {', '.join(SYSTEMS)} "
                             "(notify-server-base needs $NOTIFY_BENCH_BASE)")
    parser.add_argument("--sizes", help="comma-separated connection counts (overrides the mode)")
    parser.add_argument("--pin", action="store_true",
                        help="pin the server to CPU 0 and everything else to CPU 1 "
                             "(default: let the kernel schedule all of them on all CPUs)")
    parser.add_argument("--budget", type=float, help="seconds before remaining phases are skipped")
    parser.add_argument("--connect-timeout", type=float, default=90.0)
    parser.add_argument("--skip-lag", action="store_true")
    parser.add_argument("--skip-profile", action="store_true")
    parser.add_argument("--no-publish", action="store_true",
                        help="do not write bench/RESULTS.md, bench/results.json, bench/latency.png")
    parser.add_argument("--scoped", action="store_true",
                        help="then run the scoped fan-out step in token mode (bench/scoped.py, "
                             "about 5 minutes; also alone: python -m bench.scoped)")
    args = parser.parse_args(argv)
    args.systems = [name.strip() for name in args.systems.split(",") if name.strip()]
    unknown = [name for name in args.systems if name not in SYSTEMS]
    if unknown:
        parser.error(f"unknown systems: {', '.join(unknown)}")
    return args


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`: every child is stopped


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    mode = dict(QUICK if args.quick else FULL)
    if args.sizes:
        mode["sizes"] = [int(size) for size in args.sizes.split(",")]
    bench = Bench(args, mode)
    try:
        results = bench.run()
    finally:
        bench.close()
    if args.scoped:
        log("== scoped fan-out in token mode")
        results["scoped"] = bench.guarded(lambda: scoped.run(
            scoped.parse_args(["--pin"] if args.pin else [])))
    bench.save()
    log(f"results: {bench.json_path.relative_to(ROOT)}")
    if args.quick or args.no_publish:
        target = bench.out_dir
    else:
        target = BENCH
        (BENCH / "results.json").write_text(json.dumps(results, indent=1))
    report.write(results, target / ("RESULTS.md" if target == BENCH else "RESULTS-quick.md"),
                 target / ("latency.png" if target == BENCH else "latency-quick.png"))
    log(f"report: {(target / 'RESULTS.md').relative_to(ROOT) if target == BENCH else (target / 'RESULTS-quick.md').relative_to(ROOT)}")
    print(report.summary_table(results), flush=True)
    if results.get("scoped") and "error" not in results["scoped"]:
        print(scoped.table(results["scoped"]), *scoped.verdict(results["scoped"]), sep="\n",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
