"""Several server processes behind nginx: what nginx in the path and three
processes instead of one cost, per delivery, at 3,000 sockets and 20 ev/s.

    bench/.venv/bin/python -m bench.multiproc [--clients 3000] [--rate 20] [--seconds 20]
                                             [--cases 1,2,3,4] [--rounds 3] [--md PATH] ...

Four cases, each with its own fresh server process(es) and the same Redis, the
same load-client process and the same publisher (the emitter's Lua script,
XADD + PUBLISH, bench.publisher, as the other steps):

1. one server, the clients connect to it directly (the single-process row);
2. one server, the clients connect through nginx;
3. three servers sharing the Redis, the clients connect through nginx, whose
   `least_conn` spreads them;
4. three servers, the clients spread over them directly (a third each).

nginx is the deployed site file, deploy/nginx.conf, with its listen port and
its three upstream ports replaced by loopback ports (the substitution of
tests/support/nginx.py, reused: in case 2 all three upstream lines name the one
server), inside a minimal main configuration sized for the sockets
(`worker_processes` as given, `auto` by default like Debian's; two connections
per proxied socket). Behind nginx the servers run with NOTIFY_XHEADERS=true,
as deploy/notify-server@.service starts them.

Every server: NOTIFY_LOG_LEVEL=WARNING, connection limits off
(NOTIFY_MAX_CONNECTIONS=0, NOTIFY_MAX_CONNECTIONS_PER_IP=0), action rate and
burst 1000, the heartbeat interval set to the window's length (so every
window holds one ping round, as in bench.scoped). With three, one holds the
poller lease (read from each one's /readyz).

Per case: connect the sockets, warm up, then an idle window (sockets open, no
events), a publishing window (`--rate` x `--seconds` events, then waiting for
the last deliveries, to a fixed length), and a second idle window. CPU
(user + system, psutil) is read over each window for every server process and
its descendants (the leader's inspect helper), for nginx (master and workers),
Redis, the load client and the publisher. *Net* CPU is the publishing window's
less the mean rate of the two idle windows around it, times its length.

The cases run `--rounds` times, every other round in reverse order (a drift of
the machine does not always favour the same case); the comparisons use each
case's median over the rounds, and every round's row is kept.

Checked: every socket got every event exactly once (no frame lost, duplicated
or out of range; every event reached all sockets; no socket dropped), and
each server's own count of clients.

Writes bench/out/multiproc.json (or `--json`) and a Markdown section (`--md`);
prints the table; exits 1 when a check fails. Every child is stopped by PID
when the step ends. Loopback only.
"""

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

import psutil
import redis

from bench import procs
from bench.procs import Child, RpcChild, free_port, wait_for_port
from bench.systems import ROOT, SYSTEMS
from notify_server.dev.embedded_redis import EmbeddedRedis
from tests.support.nginx import NGINX, SITE, site_config

BENCH = ROOT / "bench"
PER_SOURCE = 5000   # sockets per loopback source address (ephemeral ports)

CASES = {
    1: {"label": "1 server, direct", "servers": 1, "nginx": False},
    2: {"label": "1 server, via nginx", "servers": 1, "nginx": True},
    3: {"label": "3 servers, via nginx", "servers": 3, "nginx": True},
    4: {"label": "3 servers, direct", "servers": 3, "nginx": False},
}

# The main configuration around the deployed site file (as tests/support/nginx.py
# builds it, with room for the benchmark's sockets).
NGINX_MAIN = """\
worker_processes {workers};
worker_rlimit_nofile {nofile};
error_log {dir}/error.log notice;
events {{
    worker_connections {connections};
}}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    include {dir}/notify-server.conf;
}}
"""


def log(message: str) -> None:
    print(message, flush=True)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def tree_cpu(process: psutil.Process) -> Dict[int, float]:
    """CPU seconds (user + system) of a process and each of its descendants, by PID."""
    out = {}
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
        except psutil.Error:
            continue
        out[member.pid] = times.user + times.system
    return out


def cpu_delta(before: Dict[int, float], after: Dict[int, float]) -> float:
    """CPU used between two `tree_cpu` readings (a process started in between
    counts whole; one that ended in between is missed)."""
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


class Nginx:
    """/usr/sbin/nginx in the foreground, on 127.0.0.1:`port`, from deploy/nginx.conf."""

    def __init__(self, port: int, upstream_ports: List[int], *, workers: str, sockets: int,
                 log_dir: Path, tag: str):
        if not NGINX.exists():
            raise RuntimeError(f"{NGINX} is missing (Debian's nginx package)")
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="notify-bench-nginx-"))
        os.chmod(self.dir, 0o755)  # workers drop root and must reach their temp dirs
        connections = 2 * sockets + 1024
        self.config = {"worker_processes": workers, "worker_connections": connections,
                       "upstream_ports": list(upstream_ports), "site": str(SITE.relative_to(ROOT))}
        site = site_config(port, upstream_ports, self.dir)
        (self.dir / "notify-server.conf").write_text(site)
        self.config["upstream_servers"] = re.findall(r"^\s*(server 127\.0\.0\.1:.*);", site,
                                                     flags=re.M)
        (self.dir / "nginx.conf").write_text(NGINX_MAIN.format(
            workers=workers, nofile=connections + 1024, connections=connections, dir=self.dir))
        self.child = Child(f"{tag}-nginx", [
            str(NGINX), "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"),
            "-e", str(self.dir / "error.log"),
            "-g", f"daemon off; pid {self.dir / 'nginx.pid'};"], log_dir=log_dir, cwd=ROOT)
        wait_for_port(self.child, port)
        expected = os.cpu_count() if workers == "auto" else int(workers)
        deadline = time.monotonic() + 10
        while len(self.child.ps.children()) < expected and time.monotonic() < deadline:
            time.sleep(0.1)
        self.config["worker_pids"] = [p.pid for p in self.child.ps.children()]

    def cpu(self) -> Dict[int, float]:
        return tree_cpu(self.child.ps)

    def error_log_tail(self, lines: int = 10) -> List[str]:
        try:
            text = (self.dir / "error.log").read_text(errors="replace").splitlines()
        except OSError:
            return []
        return [line for line in text if "[notice]" not in line][-lines:]

    def stop(self) -> None:
        self.child.stop(grace=10.0)
        shutil.rmtree(self.dir, ignore_errors=True)


def readyz(port: int) -> dict:
    """The body of a server's /readyz (200 or 503: both carry it)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except (OSError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


class MultiProc:
    def __init__(self, args):
        self.args = args
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_dir = BENCH / "out" / f"logs-multiproc-{stamp}"
        self.events = max(2, round(args.rate * args.seconds))
        self.window = args.window or float(math.ceil((self.events - 1) / args.rate + args.tail))
        self.ping = self.window if args.ping_interval is None else args.ping_interval
        self.seq = 0
        self.next_source = 2
        self.redis: Optional[EmbeddedRedis] = None
        self.helpers: List[procs.Child] = []
        self.servers: List[Child] = []
        self.ports: List[int] = []
        self.nginx: Optional[Nginx] = None

    # -- processes ------------------------------------------------------------------

    def sources(self, count: int) -> List[str]:
        """Loopback source addresses of its own for `count` sockets (a fresh
        range per case, so no 4-tuple in TIME_WAIT from a previous case is reused)."""
        first, self.next_source = (self.next_source,
                                   self.next_source + max(1, math.ceil(count / PER_SOURCE)))
        return [f"127.0.0.{n}" for n in range(first, self.next_source)]

    def server_env(self, behind_nginx: bool) -> dict:
        env = {"NOTIFY_LOG_LEVEL": "WARNING", "NOTIFY_MAX_CONNECTIONS": "0",
               "NOTIFY_MAX_CONNECTIONS_PER_IP": "0", "NOTIFY_ACTION_RATE": "1000",
               "NOTIFY_ACTION_BURST": "1000", "NOTIFY_PING_INTERVAL": f"{self.ping:g}",
               "NOTIFY_PING_TIMEOUT": f"{min(10.0, self.ping or 10.0):g}"}
        if behind_nginx:
            env["NOTIFY_XHEADERS"] = "true"  # as deploy/notify-server@.service runs them
        return env

    def start_case_processes(self, number: int, spec: dict) -> List[str]:
        """Fresh server(s) (and nginx); returns the URLs the clients use, one per
        group of clients."""
        self.flush.flushall()
        env = self.server_env(spec["nginx"])
        urls = []
        for index in range(spec["servers"]):
            server, url = SYSTEMS["notify-server"].start(self.redis.url, self.log_dir,
                                                         f"case{number}-s{index + 1}", env=env)
            self.servers.append(server)
            self.ports.append(int(url.split(":")[2].split("/")[0]))
            urls.append(url)
        if spec["nginx"]:
            port = free_port()
            self.nginx = Nginx(port, self.ports, workers=self.args.nginx_workers,
                               sockets=self.args.clients, log_dir=self.log_dir, tag=f"case{number}")
            urls = [f"ws://127.0.0.1:{port}/ws/tasks/"]
        # Three servers: let one take the poller lease before anything is measured.
        time.sleep(1.0 if spec["servers"] == 1 else 3.0)
        return urls

    def stop_case_processes(self) -> None:
        try:
            self.client.call("close", timeout=60)
            time.sleep(0.5)
        except (RuntimeError, TimeoutError, OSError) as exc:
            log(f"   closing the sockets failed: {exc}")
        if self.nginx is not None:
            self.nginx.stop()
            self.nginx = None
        for server in reversed(self.servers):
            server.stop(grace=15.0)
        self.servers, self.ports = [], []

    def close(self) -> None:
        if self.nginx is not None:
            self.nginx.stop()
            self.nginx = None
        for child in reversed(self.servers + self.helpers):
            child.stop(grace=10.0)
        self.servers, self.helpers = [], []
        procs.stop_all()  # anything else this step started and has not stopped
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    # -- the step -------------------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        self.redis = EmbeddedRedis()
        self.redis.start()
        self.redis_ps = psutil.Process(self.redis.process.pid)
        self.flush = redis.Redis.from_url(self.redis.url)
        self.client = RpcChild("multiproc-loadclient", [sys.executable, "-m", "bench.loadclient"],
                               log_dir=self.log_dir, cwd=ROOT)
        self.publisher = RpcChild("multiproc-publisher",
                                  [sys.executable, "-m", "bench.publisher", "lua", self.redis.url],
                                  log_dir=self.log_dir, cwd=ROOT)
        self.helpers += [self.client, self.publisher]
        result = {"meta": self.meta(), "config": {
            "clients": args.clients, "rate": args.rate, "events": self.events,
            "publishing_s": round((self.events - 1) / args.rate, 2), "window_s": self.window,
            "nginx_workers": args.nginx_workers, "ping_interval_s": self.ping,
            "server_env": self.server_env(False), "server_env_behind_nginx": {
                "NOTIFY_XHEADERS": "true"},
            "json": display_path(args.json), "md": display_path(args.md),
            "publisher_path": "emitter Lua script (XADD + PUBLISH), pipelined redis.asyncio "
                              "(bench.publisher lua)",
            "rounds": args.rounds}, "rounds": []}
        for round_index in range(args.rounds):
            # Every other round runs the cases in reverse order, so a drift of the
            # machine over the run does not always favour the same case.
            order = args.cases if round_index % 2 == 0 else list(reversed(args.cases))
            this = {"round": round_index + 1, "order": order, "cases": {}}
            result["rounds"].append(this)
            for number in order:
                spec = CASES[number]
                log(f"-- round {round_index + 1}, case {number}: {spec['label']}, "
                    f"{args.clients:,} sockets, {args.rate:g} ev/s x {self.events} events")
                try:
                    this["cases"][str(number)] = self.case(number, spec)
                except Exception as exc:  # one failed case must not lose the others' figures
                    log(f"   failed: {type(exc).__name__}: {exc}")
                    this["cases"][str(number)] = {**spec,
                                                  "error": f"{type(exc).__name__}: {exc}"}
                finally:
                    self.stop_case_processes()
                self.save_partial(result)
        summarise(result)
        result["meta"]["load_average_at_end"] = [round(n, 2) for n in os.getloadavg()]
        result["meta"]["finished"] = now_iso()
        return result

    def save_partial(self, result: dict) -> None:
        self.args.json.parent.mkdir(parents=True, exist_ok=True)
        self.args.json.write_text(json.dumps(result, indent=1))

    def connect(self, urls: List[str]) -> dict:
        """`--clients` sockets, split evenly over `urls` (one URL: all on it)."""
        args = self.args
        # One throw-away socket first: any lazy start-up cost is paid before measuring.
        self.client.call("connect", timeout=60, url=urls[0], count=1, deadline_s=30.0)
        self.client.call("close", timeout=60)
        time.sleep(0.5)
        shares = [args.clients // len(urls) + (1 if n < args.clients % len(urls) else 0)
                  for n in range(len(urls))]
        parts = []
        for url, share in zip(urls, shares):
            parts.append(self.client.call("connect", timeout=args.connect_timeout + 30, url=url,
                                          count=share, concurrency=200,
                                          sources=self.sources(share),
                                          deadline_s=args.connect_timeout))
        # The load client's `connected` counts every socket it holds, so far.
        return {"connected": parts[-1]["connected"],
                "failed": sum(p["failed"] for p in parts),
                "seconds": round(sum(p["seconds"] for p in parts), 3),
                "errors": [p["errors"] for p in parts if p["errors"]],
                "handshake": [p["handshake"] for p in parts], "urls": urls}

    def case(self, number: int, spec: dict) -> dict:
        args = self.args
        urls = self.start_case_processes(number, spec)
        connect = self.connect(urls)
        log(f"   connected {connect['connected']:,}/{args.clients:,} in {connect['seconds']} s"
            + (f", errors {connect['errors']}" if connect["errors"] else ""))
        if connect["connected"] < args.clients:
            raise RuntimeError(f"only {connect['connected']} of {args.clients} sockets connected"
                               + (f"; nginx: {self.nginx.error_log_tail()}" if self.nginx else ""))
        time.sleep(1.0)
        health = [readyz(port) for port in self.ports]
        per_server = [h.get("clients") for h in health]
        leaders = sorted({h.get("leader") for h in health if h.get("leader")})
        log(f"   sockets per server {per_server}; poller leader {leaders}")
        # Warm-up: a second of events, delivered and drained before measuring.
        self.publish(count=max(10, round(args.rate)), rate=args.rate)
        idle_before = self.idle_window()
        window = self.publish_window()
        idle_after = self.idle_window()
        outcome = {"label": spec["label"], "servers": spec["servers"], "nginx": spec["nginx"],
                   "connect": connect, "server_ports": list(self.ports),
                   "server_pids": [s.pid for s in self.servers],
                   "readyz_after_connect": health, "sockets_per_server": per_server,
                   "leaders_seen": leaders,
                   "nginx_config": self.nginx.config if self.nginx else None,
                   "idle_windows": [idle_before, idle_after], "window": window}
        self.net(outcome)
        health_after = [readyz(port) for port in self.ports]
        outcome["readyz_at_end"] = health_after
        outcome["servers_alive"] = all(s.alive() for s in self.servers)
        if self.nginx is not None:
            outcome["nginx_errors"] = self.nginx.error_log_tail()
        report = window["report"]
        checks = {
            "all_connected": connect["connected"] == args.clients,
            "sockets_per_server_sum": sum(c or 0 for c in per_server) == args.clients,
            "no_loss": report["lost"] == 0,
            "no_duplicate": report["duplicated"] == 0,
            "no_out_of_range_frame": report["stale_frames"] == 0,
            "every_event_to_every_socket": report["events_complete"] == self.events,
            "no_socket_dropped": report["disconnected_total"] == 0,
            "one_leader": len(leaders) == 1,
            "servers_alive": outcome["servers_alive"],
        }
        outcome["checks"] = checks
        outcome["every_socket_every_event_once"] = all(
            checks[key] for key in ("no_loss", "no_duplicate", "no_out_of_range_frame",
                                    "every_event_to_every_socket", "no_socket_dropped"))
        outcome["checks_passed"] = all(checks.values())
        log(f"   {brief(outcome)}")
        if not outcome["checks_passed"]:
            log(f"   checks failed: {[k for k, v in checks.items() if not v]}")
        return outcome

    def publish(self, count: int, rate: float) -> tuple:
        base, self.seq = self.seq, self.seq + count
        self.client.call("drain", timeout=30, quiet=0.5, timeout_s=10.0)
        self.client.call("begin", timeout=30, base=base, count=count)
        published = self.publisher.call("run", timeout=count / rate * 4 + 60, base=base,
                                        count=count, rate=rate)
        waited = self.client.call("wait", timeout=60, total=count * self.args.clients,
                                  timeout_s=10.0, quiet=3.0)
        return published, waited

    def readings(self) -> dict:
        return {"servers": [tree_cpu(s.ps) for s in self.servers],
                "nginx": self.nginx.cpu() if self.nginx else None,
                "redis": tree_cpu(self.redis_ps), "machine": psutil.cpu_times(),
                "at": time.monotonic()}

    def usage(self, before: dict, after: dict) -> dict:
        per_server = [cpu_delta(b, a) for b, a in zip(before["servers"], after["servers"])]
        own = [after["servers"][i].get(s.pid, 0.0) - before["servers"][i].get(s.pid, 0.0)
               for i, s in enumerate(self.servers)]
        return {"elapsed_s": round(after["at"] - before["at"], 3),
                "servers_cpu_s": round(sum(per_server), 4),
                "per_server_cpu_s": [round(x, 4) for x in per_server],
                "server_children_cpu_s": round(sum(per_server) - sum(own), 4),
                "nginx_cpu_s": (round(cpu_delta(before["nginx"], after["nginx"]), 4)
                                if before["nginx"] is not None else None),
                "redis_cpu_s": round(cpu_delta(before["redis"], after["redis"]), 4),
                "machine_busy": machine_busy(before["machine"], after["machine"])}

    def idle_window(self) -> dict:
        self.client.call("drain", timeout=30, quiet=0.5, timeout_s=10.0)
        before = self.readings()
        time.sleep(self.window)
        return self.usage(before, self.readings())

    def publish_window(self) -> dict:
        args = self.args
        self.client.call("drain", timeout=30, quiet=0.5, timeout_s=10.0)
        base, self.seq = self.seq, self.seq + self.events
        self.client.call("begin", timeout=30, base=base, count=self.events)
        load = os.getloadavg()[0]
        before = self.readings()
        started = before["at"]
        published = self.publisher.call("run", timeout=self.window * 4 + 60, base=base,
                                        count=self.events, rate=args.rate)
        left = max(3.0, started + self.window - time.monotonic())
        waited = self.client.call("wait", timeout=left + 60, total=self.events * args.clients,
                                  timeout_s=left, quiet=3.0)
        rest = started + self.window - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        window = self.usage(before, self.readings())
        report = self.client.call("report", timeout=60)
        window.update(overran=window["elapsed_s"] > self.window + 0.5, publisher=published,
                      waited=waited, load_average_1m_before=round(load, 2),
                      load_average_1m_after=round(os.getloadavg()[0], 2), report=report)
        return window

    def net(self, outcome: dict) -> None:
        """CPU per delivery, gross and less the idle rate around the window."""
        window, idle = outcome["window"], outcome["idle_windows"]
        deliveries = window["report"]["deliveries"]
        idle_s = sum(i["elapsed_s"] for i in idle)
        figures = {}
        for key in ("servers_cpu_s", "nginx_cpu_s", "redis_cpu_s"):
            gross = window[key]
            if gross is None:
                figures[key.replace("_cpu_s", "")] = None
                continue
            rate = sum(i[key] for i in idle) / idle_s
            net = gross - rate * window["elapsed_s"]
            figures[key.replace("_cpu_s", "")] = {
                "cpu_s": round(gross, 3), "idle_cpu_ms_per_s": round(rate * 1000, 2),
                "net_cpu_s": round(net, 3),
                "us_per_delivery": round(gross / deliveries * 1e6, 3) if deliveries else None,
                "us_per_delivery_net": round(net / deliveries * 1e6, 3) if deliveries else None}
        both = figures["servers"]["net_cpu_s"] + (figures["nginx"] or {}).get("net_cpu_s", 0.0)
        both_gross = figures["servers"]["cpu_s"] + (figures["nginx"] or {}).get("cpu_s", 0.0)
        figures["servers_plus_nginx"] = {
            "cpu_s": round(both_gross, 3), "net_cpu_s": round(both, 3),
            "us_per_delivery": round(both_gross / deliveries * 1e6, 3) if deliveries else None,
            "us_per_delivery_net": round(both / deliveries * 1e6, 3) if deliveries else None}
        figures["load_client_cpu_s"] = window["report"]["client_cpu_s"]
        figures["publisher_cpu_s"] = window["publisher"]["publisher_cpu_s"]
        outcome["cpu"] = figures

    def meta(self) -> dict:
        from bench.main import git_state
        return {"git": git_state(), "started": now_iso(),
                "command": " ".join(["bench/.venv/bin/python -m bench.multiproc", *sys.argv[1:]]),
                "args": {key: str(value) if isinstance(value, Path) else value
                         for key, value in vars(self.args).items()},
                "load_average_at_start": [round(n, 2) for n in os.getloadavg()],
                "cpus": os.cpu_count(), "nginx": nginx_version(), "site": site_state(),
                "pinning": None}


def machine_busy(before, after) -> float:
    """The share of all CPUs' time that was not idle between two psutil.cpu_times()."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0.0)
                                         - getattr(before, "iowait", 0.0))
    return round(1.0 - idle / total, 3) if total > 0 else None


def nginx_version() -> Optional[str]:
    import subprocess
    try:
        return subprocess.run([str(NGINX), "-v"], capture_output=True, text=True,
                              timeout=10).stderr.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def site_state() -> dict:
    """Which deploy/nginx.conf was measured: its upstream block, a digest, and
    whether it differs from the commit."""
    import hashlib
    import subprocess
    text = SITE.read_text()
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(SITE)], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        dirty = None
    block = text[text.find("upstream "):]
    return {"path": str(SITE.relative_to(ROOT)), "sha256": hashlib.sha256(text.encode()).hexdigest(),
            "uncommitted": bool(dirty) if dirty is not None else None,
            "upstream": block[:block.find("}") + 1] if "upstream " in text else None}


def summarise(result: dict) -> None:
    """Per case, the medians over the rounds (one stalled window moves a mean a
    lot); then the comparisons the issue asks for, from those medians."""
    by_case: Dict[int, List[dict]] = {}
    for this in result["rounds"]:
        for number, case in this["cases"].items():
            if "error" not in case:
                by_case.setdefault(int(number), []).append(case)

    def mean(values):  # the median (the mean of the middle one or two)
        values = sorted(v for v in values if v is not None)
        if not values:
            return None
        middle = values[(len(values) - 1) // 2:len(values) // 2 + 1]
        return round(sum(middle) / len(middle), 3)

    means = {}  # medians, by case
    for number, cases in sorted(by_case.items()):
        last = [c["window"]["report"]["latency_last_client"] for c in cases]
        cpu = [c["cpu"] for c in cases]
        means[number] = {
            "label": CASES[number]["label"], "rounds": len(cases),
            "p50_ms": mean(x["p50_ms"] for x in last), "p99_ms": mean(x["p99_ms"] for x in last),
            "max_ms": mean(x["max_ms"] for x in last),
            "p99_ms_each": [x["p99_ms"] for x in last],
            "server_us": mean(c["servers"]["us_per_delivery"] for c in cpu),
            "server_us_net": mean(c["servers"]["us_per_delivery_net"] for c in cpu),
            "server_us_net_each": [c["servers"]["us_per_delivery_net"] for c in cpu],
            "nginx_us_net": mean((c["nginx"] or {}).get("us_per_delivery_net") for c in cpu),
            "total_us": mean(c["servers_plus_nginx"]["us_per_delivery"] for c in cpu),
            "total_us_net": mean(c["servers_plus_nginx"]["us_per_delivery_net"] for c in cpu),
            "total_us_net_each": [c["servers_plus_nginx"]["us_per_delivery_net"] for c in cpu],
            "machine_busy": mean(c["window"]["machine_busy"] for c in cases),
            "every_socket_every_event_once": all(c["every_socket_every_event_once"]
                                                 for c in cases)}
    result["medians"] = {str(n): m for n, m in means.items()}

    def compare(base: int, other: int) -> dict:
        a, b = means[base], means[other]
        return {"cases": [base, other], "p99_ms": [a["p99_ms"], b["p99_ms"]],
                "p99_added_ms": round(b["p99_ms"] - a["p99_ms"], 3),
                "server_us_net": [a["server_us_net"], b["server_us_net"]],
                "server_ratio": ratio(b["server_us_net"], a["server_us_net"]),
                "nginx_us_net": b["nginx_us_net"],
                "total_us_net": [a["total_us_net"], b["total_us_net"]],
                "total_ratio": ratio(b["total_us_net"], a["total_us_net"]),
                "machine_busy": [a["machine_busy"], b["machine_busy"]]}

    out = {}
    for key, base, other in (("nginx_one_server", 1, 2), ("nginx_three_servers", 4, 3),
                             ("three_processes_direct", 1, 4), ("deployed_vs_single", 1, 3)):
        if base in means and other in means:
            out[key] = compare(base, other)
    result["comparisons"] = out
    outcomes = [case for this in result["rounds"] for case in this["cases"].values()]
    result["checks_passed"] = bool(outcomes) and all(case.get("checks_passed")
                                                     for case in outcomes)


def display_path(path: Path) -> str:
    path = Path(path).resolve()
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


# -- output ----------------------------------------------------------------------------

def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def brief(case: dict) -> str:
    report, cpu = case["window"]["report"], case["cpu"]
    last = report["latency_last_client"]
    nginx = cpu["nginx"]
    return (f"last client p50 {last['p50_ms']} p99 {last['p99_ms']} max {last['max_ms']} ms; "
            f"lost {report['lost']} dup {report['duplicated']}; servers "
            f"{cpu['servers']['cpu_s']} s = {cpu['servers']['us_per_delivery']} µs/delivery "
            f"({cpu['servers']['us_per_delivery_net']} net)"
            + (f"; nginx {nginx['cpu_s']} s = {nginx['us_per_delivery']} µs/delivery "
               f"({nginx['us_per_delivery_net']} net)" if nginx else ""))


def _pct(value) -> str:
    return "–" if value is None else f"{value * 100:.0f} %"


def means_table(result: dict) -> str:
    rounds = result["config"]["rounds"]
    lines = [f"| case | last client p50 / p99 / max ms (p99 each round) "
             f"| server µs/delivery net (each round) | nginx µs/delivery net "
             f"| servers + nginx µs/delivery net | machine busy |",
             "|---|---:|---:|---:|---:|---:|"]
    for number, m in result.get("medians", {}).items():
        each_p99 = ", ".join(_fmt(x) for x in m["p99_ms_each"])
        each_us = ", ".join(_fmt(x, 2) for x in m["server_us_net_each"])
        rounds_note = "" if m["rounds"] == rounds else f" ({m['rounds']} of {rounds} rounds)"
        lines.append(
            f"| {number}. {m['label']}{rounds_note} "
            f"| {_fmt(m['p50_ms'])} / **{_fmt(m['p99_ms'])}** / {_fmt(m['max_ms'])} ({each_p99}) "
            f"| **{_fmt(m['server_us_net'], 2)}** ({each_us}) "
            f"| {_fmt(m['nginx_us_net'], 2)} | **{_fmt(m['total_us_net'], 2)}** "
            f"| {_pct(m['machine_busy'])} |")
    return "\n".join(lines)


def table(result: dict) -> str:
    lines = ["| case | round | sockets per server | last client p50 / p99 / max ms "
             "| first client p99 ms | lost | dup | every socket every event once "
             "| server CPU s (sum) | server µs/delivery (net) | nginx CPU s "
             "| nginx µs/delivery (net) | servers + nginx µs/delivery (net) | Redis CPU s "
             "| load client CPU s | machine busy |",
             "|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    rows = sorted(((int(number), this["round"], case) for this in result["rounds"]
                   for number, case in this["cases"].items()), key=lambda row: row[:2])
    for number, round_number, case in rows:
        if "error" in case:
            lines.append(f"| {number}. {case['label']} | {round_number} | – "
                         f"| failed: {case['error']} " + "| – " * 12 + "|")
            continue
        report, cpu = case["window"]["report"], case["cpu"]
        last, first = report["latency_last_client"], report["latency_first_client"]
        spread = " / ".join(_fmt(n) for n in case["sockets_per_server"])
        nginx = cpu["nginx"]
        nginx_us = (f"{_fmt(nginx['us_per_delivery'], 2)} ({_fmt(nginx['us_per_delivery_net'], 2)})"
                    if nginx else "–")
        lines.append(
            f"| {number}. {case['label']} | {round_number} | {spread} "
            f"| {_fmt(last['p50_ms'])} / {_fmt(last['p99_ms'])} / {_fmt(last['max_ms'])} "
            f"| {_fmt(first['p99_ms'])} | {report['lost']:,} | {report['duplicated']:,} "
            f"| {'yes' if case['every_socket_every_event_once'] else 'NO'} "
            f"| {_fmt(cpu['servers']['cpu_s'], 2)} "
            f"| {_fmt(cpu['servers']['us_per_delivery'], 2)} "
            f"({_fmt(cpu['servers']['us_per_delivery_net'], 2)}) "
            f"| {_fmt(nginx['cpu_s'], 2) if nginx else '–'} "
            f"| {nginx_us} "
            f"| {_fmt(cpu['servers_plus_nginx']['us_per_delivery'], 2)} "
            f"({_fmt(cpu['servers_plus_nginx']['us_per_delivery_net'], 2)}) "
            f"| {_fmt(cpu['redis']['cpu_s'], 2)} | {_fmt(cpu['load_client_cpu_s'], 2)} "
            f"| {_pct(case['window']['machine_busy'])} |")
    return "\n".join(lines)


def verdict(result: dict) -> List[str]:
    comp, out = result.get("comparisons", {}), []

    def line(title: str, c: dict, nginx: bool) -> str:
        (a, b), (ua, ub), (ta, tb) = c["p99_ms"], c["server_us_net"], c["total_us_net"]
        (ba, bb) = c["machine_busy"]
        text = (f"- **{title}** (case {c['cases'][1]} against {c['cases'][0]}): p99 to the last "
                f"client {_fmt(a)} → {_fmt(b)} ms ({c['p99_added_ms']:+,.1f} ms); server CPU "
                f"per delivery {_fmt(ua, 2)} → {_fmt(ub, 2)} µs net "
                f"({_fmt(c['server_ratio'], 2)} x)")
        if nginx:
            text += (f", nginx {_fmt(c['nginx_us_net'], 2)} µs more; servers + nginx "
                     f"{_fmt(ta, 2)} → {_fmt(tb, 2)} µs ({_fmt(c['total_ratio'], 2)} x)")
        return text + f"; machine busy {_pct(ba)} → {_pct(bb)}."

    titles = {"nginx_one_server": ("nginx in the path, one server", True),
              "nginx_three_servers": ("nginx in the path, three servers", True),
              "three_processes_direct": ("three processes instead of one, sockets direct", False),
              "deployed_vs_single": ("the deployed shape (three servers behind nginx) against "
                                     "one process, sockets direct", True)}
    for key, (title, nginx) in titles.items():
        if key in comp:
            out.append(line(title, comp[key], nginx))
    failed = [f"{number}. {case['label']} (round {this['round']})"
              for this in result["rounds"] for number, case in this["cases"].items()
              if not case.get("checks_passed")]
    out.append("- Checks: " + ("in every case and round every socket got every event exactly "
                               "once, no socket dropped, and the servers sharing the Redis had "
                               "one poller leader."
                               if not failed else f"FAILED in {', '.join(failed)} (see the JSON)."))
    return out


def markdown(result: dict, heading: str = "##") -> str:
    config, meta = result["config"], result["meta"]
    cases = [c for this in result["rounds"] for c in this["cases"].values() if "error" not in c]
    nginx_conf = next((c["nginx_config"] for c in cases if c.get("nginx_config")), None)
    rounds = config["rounds"]
    one_server_upstream = next(
        (" and ".join(f"`{re.sub(r':[0-9]+', ':PORT', line)}`"
                      for line in c["nginx_config"]["upstream_servers"])
         for c in cases if c.get("nginx_config") and c["servers"] == 1), None)
    client_share = [c["cpu"]["load_client_cpu_s"] / c["window"]["elapsed_s"] for c in cases]
    out = [f"{heading} Several processes behind nginx", "",
           f"**What this shows, and what it does not.** This machine has {meta['cpus']} CPU "
           f"cores, shared by everything in the test: the server process(es), nginx, Redis, "
           f"the load client holding all {config['clients']:,} sockets and the publisher. Three "
           f"server processes cannot run faster than one here; they compete for the same two "
           f"cores with each other, with nginx and with the client. So the figures below are "
           f"the **overhead** of nginx in the path and of three processes instead of one (CPU "
           f"per delivery, latency added), not a speed-up. On machines with a core per process "
           f"and the clients elsewhere, three processes would each carry a third of the "
           f"sockets; that is not measured here.", "",
           f"Each case: fresh server process(es) on one Redis, {config['clients']:,} sockets "
           f"from one load-client process, {config['events']:,} events at {config['rate']:g}/s "
           f"through the emitter's Lua script (XADD + PUBLISH, as the other steps), so "
           f"{config['events'] * config['clients']:,} deliveries per case. "
           f"Cases: (1) one server, sockets direct: the single-process row; (2) one server, "
           f"sockets through nginx; (3) three servers, sockets through nginx, whose `least_conn` "
           f"spreads them; (4) three servers, a third of the sockets direct to each. "
           + (f"{rounds} rounds, every other one in reverse order; " if rounds > 1 else "")
           + f"nginx runs `deploy/nginx.conf` as deployed, with its listen and upstream ports "
           f"replaced by loopback ports (the substitution of `tests/support/nginx.py`"
           + (f"; with one server the upstream holds {one_server_upstream}"
              if one_server_upstream else "") + ")"
           + (f", `worker_processes {nginx_conf['worker_processes']}`, "
              f"`worker_connections {nginx_conf['worker_connections']:,}`"
              if nginx_conf else "")
           + ". Behind nginx the servers run with `NOTIFY_XHEADERS=true`, as "
           "`deploy/notify-server@.service` starts them. Every server: "
           "`NOTIFY_LOG_LEVEL=WARNING`, connection limits off (`NOTIFY_MAX_CONNECTIONS=0`, "
           "`NOTIFY_MAX_CONNECTIONS_PER_IP=0`), `NOTIFY_ACTION_RATE`/`BURST` 1000, heartbeat "
           f"every {config['ping_interval_s']:g} s (the window's length, so each window holds "
           "one ping round); with three, one of them holds the poller lease.", "",
           f"Latency: per event, from the publisher's send to its arrival at the last (first) "
           f"of all {config['clients']:,} sockets, p50/p99/max over the {config['events']} "
           f"events. CPU: user + system seconds (psutil) over a {config['window_s']:g} s window "
           f"holding the publishing, summed over the server processes and their children (the "
           f"leader's inspect helper), and over nginx's master and workers; µs per delivery is "
           f"that over the deliveries; *net* subtracts the idle rate measured in windows of "
           f"the same length just before and after (same sockets, no events). *Machine busy*: "
           f"the share of both CPUs' time not idle over the window, whatever ran"
           + (f" (the load client alone used {min(client_share):.2f} to "
              f"{max(client_share):.2f} of a core)" if client_share else "")
           + ". *every socket every event once*: no "
           f"delivery lost or duplicated, each event reached all sockets, no socket dropped.", ""]
    if rounds > 1:
        out += [f"Medians over the {rounds} rounds (per round in brackets):", "",
                means_table(result), ""]
    out += verdict(result)
    out += ["", "Every round:" if rounds > 1 else "Figures:", "", table(result), ""]
    per_case = []
    for this in result["rounds"]:
        for number, case in this["cases"].items():
            if "error" in case:
                continue
            window = case["window"]
            per_case.append(f"{number}" + (f"/{this['round']}" if rounds > 1 else "")
                            + f": {window['load_average_1m_before']} → "
                            f"{window['load_average_1m_after']}")
    out += [f"Commit `{meta['git']['commit']}`"
            + (f" (uncommitted: {', '.join(meta['git']['server_code_uncommitted'])})"
               if meta["git"]["server_code_uncommitted"] else "")
            + f", {meta['started']}; {meta.get('nginx') or 'nginx'}"
            + (" (deploy/nginx.conf from the working tree, with uncommitted changes)"
               if (meta.get("site") or {}).get("uncommitted") else "")
            + "; no CPU pinning; load average (1 min) before → after each publishing window"
            + (" (case/round)" if rounds > 1 else "") + f": {'; '.join(per_case)}. "
            f"Command: `{meta['command']}`. Raw figures: `{config['json']}`.", ""]
    return "\n".join(out)


# -- entry points ---------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.multiproc",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=3000, help="sockets in all, every case")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of publishing")
    parser.add_argument("--window", type=float,
                        help="seconds per measuring window (default: the publishing time + "
                             "--tail, rounded up)")
    parser.add_argument("--tail", type=float, default=2.0)
    parser.add_argument("--cases", default="1,2,3,4", help="which of the cases, in order")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times to run the cases (every other round in reverse order)")
    parser.add_argument("--nginx-workers", default="auto",
                        help="nginx worker_processes (Debian's default: auto)")
    parser.add_argument("--ping-interval", type=float,
                        help="the servers' heartbeat interval (default: the window's length)")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path, default=BENCH / "out" / "multiproc.json")
    parser.add_argument("--md", type=Path, default=BENCH / "out" / "multiproc.md",
                        help="where to write the Markdown section")
    args = parser.parse_args(argv)
    try:
        args.cases = [int(n) for n in args.cases.split(",") if n.strip()]
    except ValueError:
        parser.error("--cases: comma-separated numbers of 1-4")
    if not args.cases or any(n not in CASES for n in args.cases):
        parser.error("--cases: comma-separated numbers of 1-4")
    if args.clients < 3 or args.rate <= 0 or args.seconds <= 0 or args.rounds < 1:
        parser.error("need --clients >= 3, --rate > 0, --seconds > 0, --rounds >= 1")
    if args.nginx_workers != "auto" and not args.nginx_workers.isdigit():
        parser.error("--nginx-workers: a number or auto")
    return args


def run(args) -> dict:
    """The whole step; every child is stopped however it ends."""
    from bench.main import raise_fd_limit
    raise_fd_limit()
    step = MultiProc(args)
    try:
        result = step.run()
    finally:
        step.close()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    args.md.parent.mkdir(parents=True, exist_ok=True)
    args.md.write_text(markdown(result))
    return result


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`: every child is stopped


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    result = run(args)
    log(table(result))
    if args.rounds > 1:
        log(means_table(result))
    for line in verdict(result):
        log(line)
    log(f"results: {args.json}; Markdown: {args.md}")
    return 0 if result["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
