"""Scoped fan-out in token mode: does an event for one owner cost the same
however many other users are connected?

    bench/.venv/bin/python -m bench.scoped [--pin] [--hot 1000] [--cold 10000] ...
    bench/run.sh ... --scoped          # the same step after the fan-out benchmark

The requirement: "10,000 sockets of 10,000 distinct owners plus 1,000
admin-less sockets of one owner; an event for that one owner must cost the
server no more than twice what it costs with no other sockets connected."

One notify-server in token mode (a random HS256 secret; connection limits
off so they refuse no bench socket). Every socket connects with ``?token=`` a
JWT of its own owner (`sub`, owners defaulting to [sub], never admin):

- case A: the `--hot` sockets of owner "hot" alone;
- case B: the same sockets, plus `--cold` sockets of owners cold-0 .. cold-N-1
  (in `--cold-procs` other load-client processes).

In each case `--events` events with the top-level ``"owner": "hot"`` go
through the emitter's Lua script (XADD + PUBLISH, bench.publisher) at
`--rate` per second, `--repeats` times. Server CPU (user + system of the
server process, psutil) is read over a window of `--window` seconds that
holds the publishing, and over idle windows of the same length before and
after each (sockets connected, no events); the net CPU per event is the
publishing window's less the mean of the idle windows on either side, over
the events. The server's heartbeat interval is set to the window's length, so
every window holds exactly one ping round and the subtraction removes it.

Checked: every hot socket got every event of each window exactly once (per
socket counts); after case B, one event for owner "cold-0" reaches that one
socket, and a second later every other cold socket has still received no
event at all, nor has any hot socket received that one.

The default rate, 50 events/s to 1,000 sockets, keeps the server about half
busy: each event is fanned out on its own. Near saturation the server catches
up in batches (one write per socket for several events), and the cost per
event would fall as the server fell behind, hiding what B adds.

Writes bench/out/scoped.json (or `--json`) and a Markdown section (`--md`);
prints the table; exits 1 when a check fails or B / A is over 2. Every child
is stopped by PID when the step ends.
"""

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import List, Optional

import redis

from bench import procs
from bench.procs import RpcChild
from bench.stats import summary_ms
from bench.systems import ROOT, SYSTEMS
from notify_server.dev.embedded_redis import EmbeddedRedis

BENCH = ROOT / "bench"
HOT_OWNER = "hot"
COLD_PREFIX = "cold-"
GOAL_RATIO = 2.0
PER_SOURCE = 5000   # sockets per loopback source address (ephemeral ports)


def log(message: str) -> None:
    print(message, flush=True)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def cpu_of(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


class Scoped:
    def __init__(self, args):
        self.args = args
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_dir = BENCH / "out" / f"logs-scoped-{stamp}"
        pin = args.pin and (os.cpu_count() or 1) >= 2
        self.server_cpus = {0} if pin else None
        self.helper_cpus = {1} if pin else None
        self.window = args.window or float(math.ceil((args.events - 1) / args.rate + args.tail))
        self.secret = secrets.token_hex(32)
        self.seq = 0
        self.next_source = 2
        self.redis: Optional[EmbeddedRedis] = None
        self.children: List[procs.Child] = []

    # -- processes ---------------------------------------------------------------

    def child(self, name: str, module: str, *argv: str) -> RpcChild:
        child = RpcChild(name, [sys.executable, "-m", module, *argv], log_dir=self.log_dir,
                         cwd=ROOT, cpus=self.helper_cpus)
        self.children.append(child)
        return child

    def sources(self, count: int) -> List[str]:
        """Loopback source addresses of its own for `count` sockets."""
        first, self.next_source = (self.next_source,
                                   self.next_source + max(1, math.ceil(count / PER_SOURCE)))
        return [f"127.0.0.{n}" for n in range(first, self.next_source)]

    def close(self) -> None:
        for child in reversed(self.children):
            child.stop(grace=10.0)
        self.children = []
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    # -- the step ------------------------------------------------------------------

    def run(self) -> dict:
        args = self.args
        self.redis = EmbeddedRedis()
        self.redis.start()
        if self.helper_cpus:
            os.sched_setaffinity(self.redis.process.pid, self.helper_cpus)
        self.redis_ps = procs.psutil.Process(self.redis.process.pid)
        redis.Redis.from_url(self.redis.url).flushall()
        ping = self.window if args.ping_interval is None else args.ping_interval
        env = {"NOTIFY_AUTH_SECRET": self.secret, "NOTIFY_MAX_CONNECTIONS": "0",
               "NOTIFY_MAX_CONNECTIONS_PER_IP": "0", "NOTIFY_LOG_LEVEL": "WARNING",
               "NOTIFY_PING_INTERVAL": f"{ping:g}",
               "NOTIFY_PING_TIMEOUT": f"{min(10.0, ping or 10.0):g}"}
        server, url = SYSTEMS["notify-server"].start(self.redis.url, self.log_dir, "scoped",
                                                     cpus=self.server_cpus, env=env)
        self.children.append(server)
        self.server = server
        time.sleep(1.0)
        self.hot = self.child("scoped-hot", "bench.scopedclient")
        shares = [args.cold // args.cold_procs + (1 if n < args.cold % args.cold_procs else 0)
                  for n in range(args.cold_procs)] if args.cold else []
        self.colds = [(self.child(f"scoped-cold-{n}", "bench.scopedclient"), share)
                      for n, share in enumerate(shares) if share]
        self.publisher = self.child("scoped-publisher", "bench.publisher", "lua", self.redis.url)
        result = {"meta": self.meta(), "config": {
            "hot_sockets": args.hot, "hot_owner": HOT_OWNER, "cold_sockets": args.cold,
            "cold_owners": f"{COLD_PREFIX}0 .. {COLD_PREFIX}{args.cold - 1}" if args.cold else None,
            "cold_processes": len(self.colds), "events_per_window": args.events,
            "rate": args.rate, "repeats": args.repeats, "window_s": self.window,
            "server_env": {k: v for k, v in env.items() if k != "NOTIFY_AUTH_SECRET"}},
            "cases": {}}

        log(f"-- scoped: {args.hot:,} sockets of owner {HOT_OWNER!r}")
        self.hot.call("tokens", timeout=60, count=args.hot, secret=self.secret,
                      shared_owner=HOT_OWNER)
        connect = self.hot.call("connect", timeout=args.connect_timeout + 30, url=url,
                                count=args.hot, concurrency=200, sources=self.sources(args.hot),
                                deadline_s=args.connect_timeout)
        log(f"   connected {connect['connected']}/{args.hot} in {connect['seconds']} s")
        self.check_open(self.hot, args.hot, "hot")
        result["cases"]["A"] = self.case("A", connect, cold=0)

        if self.colds:
            log(f"-- scoped: + {args.cold:,} sockets of {args.cold:,} distinct owners")
            first = 0
            for client, share in self.colds:
                client.call("tokens", timeout=120, count=share, secret=self.secret,
                            owner_prefix=COLD_PREFIX, first=first)
                first += share
            plans = [(client, share, self.sources(share)) for client, share in self.colds]
            with concurrent.futures.ThreadPoolExecutor(len(plans)) as pool:
                connects = list(pool.map(lambda plan: plan[0].call(
                    "connect", timeout=args.connect_timeout + 30, url=url, count=plan[1],
                    concurrency=200, sources=plan[2], deadline_s=args.connect_timeout), plans))
            connect = {"connected": sum(c["connected"] for c in connects),
                       "failed": sum(c["failed"] for c in connects),
                       "seconds": max(c["seconds"] for c in connects), "processes": connects}
            log(f"   connected {connect['connected']}/{args.cold} in {connect['seconds']} s")
            for client, share in self.colds:
                self.check_open(client, share, "cold")
            result["cases"]["B"] = self.case("B", connect, cold=args.cold)
            result["cold_counts_after_b"] = [client.call("counts", timeout=60)
                                             for client, _ in self.colds]
            result["isolation"] = self.marker()

        self.summarise(result)
        result["meta"]["load_average_at_end"] = [round(n, 2) for n in os.getloadavg()]
        result["meta"]["finished"] = now_iso()
        result["server_alive"] = server.alive()
        return result

    def check_open(self, client: RpcChild, expected: int, label: str) -> None:
        """The upgrade is accepted before the token is checked: a refused token
        shows as a socket closed at once (4001), not as a failed connect."""
        time.sleep(1.0)
        counts = client.call("counts", timeout=60)
        if counts["sockets"] != expected or counts["open"] != expected:
            raise RuntimeError(f"{label}: {counts['open']} of {expected} sockets open "
                               f"({counts['sockets']} connected); server log:\n"
                               f"{self.server.log_tail()}")

    def case(self, label: str, connect: dict, cold: int) -> dict:
        args = self.args
        hot = args.hot
        self.publish(self.hot, hot, count=max(10, round(args.rate)), rate=args.rate)  # warm-up
        time.sleep(1.0)
        idle = [self.idle_window()]
        windows = []
        for repeat in range(args.repeats):
            window = self.publish_window()
            idle.append(self.idle_window())
            baseline = (idle[-2]["cpu_s"] + idle[-1]["cpu_s"]) / (idle[-2]["elapsed_s"]
                                                                  + idle[-1]["elapsed_s"])
            net = window["cpu_s"] - baseline * window["elapsed_s"]
            window.update(idle_cpu_per_s=round(baseline, 5), net_cpu_s=round(net, 4),
                          cpu_us_per_event=round(net / args.events * 1e6, 1),
                          cpu_us_per_hot_delivery=round(net / args.events / hot * 1e6, 3))
            windows.append(window)
            last = window["latency_last_client"]
            log(f"   {label} #{repeat + 1}: {window['cpu_us_per_event']:,} µs/event net "
                f"({window['cpu_s']:.3f} s in {window['elapsed_s']:.2f} s, idle "
                f"{baseline * 1000:.1f} ms/s), last hot socket p50/p99 "
                f"{last['p50_ms']}/{last['p99_ms']} ms, lost {window['lost']}, "
                f"every socket all: {window['every_socket_every_event']}")
        to_last = [x for w in windows for x in w.pop("to_last_s")]
        to_first = [x for w in windows for x in w.pop("to_first_s")]
        for window in windows:
            window["slowest_events"] = slowest(window.pop("to_last_series_s"), args.rate)
        per_event = sum(w["cpu_us_per_event"] for w in windows) / len(windows)
        return {"hot_sockets": hot, "cold_sockets": cold, "connections": hot + cold,
                "connect": connect, "server_rss_bytes": self.server.rss(),
                "idle_windows": idle, "windows": windows,
                "cpu_us_per_event": round(per_event, 1),
                "cpu_us_per_hot_delivery": round(per_event / hot, 3),
                "idle_cpu_ms_per_s": round(sum(i["cpu_s"] for i in idle)
                                           / sum(i["elapsed_s"] for i in idle) * 1000, 2),
                "busy_share": round(max(w["busy_share"] for w in windows), 3),
                "latency_last_client": summary_ms(to_last),
                "latency_first_client": summary_ms(to_first),
                "every_socket_every_event": all(w["every_socket_every_event"] for w in windows)}

    def publish(self, client: RpcChild, sockets: int, count: int, rate: float,
                owner: str = HOT_OWNER, quiet: float = 3.0) -> tuple:
        base, self.seq = self.seq, self.seq + count
        client.call("drain", timeout=30, quiet=0.5, timeout_s=10.0)
        client.call("begin", timeout=30, base=base, count=count)
        published = self.publisher.call("run", timeout=count / rate * 4 + 60, base=base,
                                        count=count, rate=rate, owner=owner)
        waited = client.call("wait", timeout=60, total=count * sockets, timeout_s=10.0, quiet=quiet)
        return published, waited

    def idle_window(self) -> dict:
        cpu, started = self.server.cpu_seconds(), time.monotonic()
        time.sleep(self.window)
        elapsed = time.monotonic() - started
        return {"cpu_s": round(self.server.cpu_seconds() - cpu, 4), "elapsed_s": round(elapsed, 3)}

    def publish_window(self) -> dict:
        args = self.args
        self.hot.call("drain", timeout=30, quiet=0.5, timeout_s=10.0)
        self.hot.call("reset_counts", timeout=30)
        base, self.seq = self.seq, self.seq + args.events
        self.hot.call("begin", timeout=30, base=base, count=args.events)
        load = os.getloadavg()[0]
        cpu, children = self.server.cpu_seconds(), self.server.children_cpu_seconds()
        redis_before, started = cpu_of(self.redis_ps), time.monotonic()
        published = self.publisher.call("run", timeout=self.window * 4 + 60, base=base,
                                        count=args.events, rate=args.rate, owner=HOT_OWNER)
        left = max(3.0, started + self.window - time.monotonic())
        waited = self.hot.call("wait", timeout=left + 60, total=args.events * args.hot,
                               timeout_s=left, quiet=3.0)
        rest = started + self.window - time.monotonic()
        if rest > 0:
            time.sleep(rest)
        elapsed = time.monotonic() - started
        used = self.server.cpu_seconds() - cpu
        window = {"cpu_s": round(used, 4), "elapsed_s": round(elapsed, 3),
                  "busy_share": round(used / elapsed, 3),
                  "server_children_cpu_s": round(self.server.children_cpu_seconds() - children, 3),
                  "redis_cpu_s": round(cpu_of(self.redis_ps) - redis_before, 3),
                  "overran_window": elapsed > self.window + 0.5,
                  "publisher": published, "waited": waited,
                  "load_average_1m_before": round(load, 2)}
        report = self.hot.call("report", timeout=60)
        counts = self.hot.call("counts", timeout=60)
        window.update({key: report[key] for key in (
            "deliveries", "expected_deliveries", "lost", "duplicated", "stale_frames",
            "events_complete", "latency_last_client", "latency_first_client",
            "latency_growth_ms", "client_cpu_s")})
        window["hot_counts"] = counts
        window["every_socket_every_event"] = (
            counts["by_count"] == {str(args.events): args.hot} and report["lost"] == 0
            and report["duplicated"] == 0 and counts["open"] == args.hot)
        window.update(self.hot.call("latencies", timeout=60))
        window["to_last_series_s"] = list(window["to_last_s"])
        return window

    def marker(self) -> dict:
        """One event for owner cold-0, after everything else: its socket gets
        it; a second after it arrived, no other cold socket has had any event
        at all, and no hot socket had this one."""
        first, share = self.colds[0]
        self.hot.call("reset_counts", timeout=30)
        published, waited = self.publish(first, 1, count=1, rate=1.0,
                                         owner=f"{COLD_PREFIX}0", quiet=10.0)
        time.sleep(1.0)
        marker_latency = first.call("report", timeout=60)["latency_last_client"]
        colds = [client.call("counts", timeout=60) for client, _ in self.colds]
        hot = self.hot.call("counts", timeout=60)
        got = {owner: n for c in colds for owner, n in c["nonzero_owners"].items()}
        silent = sum(c["by_count"].get("0", 0) for c in colds)
        ok = (got == {f"{COLD_PREFIX}0": 1} and sum(c["nonzero_sockets"] for c in colds) == 1
              and silent == self.args.cold - 1 and hot["nonzero_sockets"] == 0
              and all(c["open"] == c["sockets"] for c in colds))
        log(f"   marker for {COLD_PREFIX}0: cold sockets with events {got}, silent "
            f"{silent:,}/{self.args.cold - 1:,}, hot sockets with it {hot['nonzero_sockets']}: "
            f"{'ok' if ok else 'FAILED'}")
        return {"ok": ok, "marker_owner": f"{COLD_PREFIX}0", "received_by": got,
                "cold_sockets_without_any_event": silent, "cold_sockets": self.args.cold,
                "hot_sockets_with_marker": hot["nonzero_sockets"], "marker_waited": waited,
                "marker_latency": marker_latency, "cold_counts": colds, "hot_counts": hot}

    def summarise(self, result: dict) -> None:
        a, b = result["cases"].get("A"), result["cases"].get("B")
        if a and b and a["cpu_us_per_event"] > 0:
            ratio = b["cpu_us_per_event"] / a["cpu_us_per_event"]
            result["ratio_b_over_a"] = round(ratio, 3)
            result["goal_met"] = ratio <= GOAL_RATIO
        result["checks_passed"] = bool(
            all(case["every_socket_every_event"] for case in result["cases"].values())
            and (result.get("isolation") or {"ok": True})["ok"])

    def meta(self) -> dict:
        from bench.main import git_state
        return {"git": git_state(), "started": now_iso(),
                "args": {key: str(value) if isinstance(value, Path) else value
                         for key, value in vars(self.args).items()},
                "load_average_at_start": [round(n, 2) for n in os.getloadavg()],
                "cpus": os.cpu_count(),
                "pinning": {"server": sorted(self.server_cpus) if self.server_cpus else None,
                            "redis_clients_publisher": sorted(self.helper_cpus)
                            if self.helper_cpus else None}}


def slowest(to_last: List[float], rate: float, top: int = 10) -> dict:
    """Where in the window the slow events were: the `top` slowest (seconds
    after the first send, latency ms), and the events over 100 ms as runs of
    consecutive ones (a stall of the server shows as one run)."""
    ranked = sorted(range(len(to_last)), key=lambda i: to_last[i], reverse=True)[:top]
    runs, start = [], None
    for index, latency in enumerate(to_last + [0.0]):
        if latency > 0.1 and start is None:
            start = index
        elif latency <= 0.1 and start is not None:
            runs.append({"from_s": round(start / rate, 2), "events": index - start,
                         "max_ms": round(max(to_last[start:index]) * 1000, 1)})
            start = None
    return {"top": [[round(i / rate, 2), round(to_last[i] * 1000, 1)] for i in ranked],
            "runs_over_100_ms": runs}


# -- output -------------------------------------------------------------------------

def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"


def _cpus(cpus) -> str:
    return ",".join(str(cpu) for cpu in cpus)


def table(result: dict) -> str:
    lines = ["| case | sockets | server CPU µs per event (net) | µs per hot delivery "
             "| idle CPU ms/s | server busy while publishing | last hot socket p50 / p99 / max ms "
             "| first hot socket p50 / p99 ms | every hot socket got every event once |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    names = {"A": f"A: {HOT_OWNER!r} only", "B": f"B: {HOT_OWNER!r} + distinct owners"}
    for label, case in result.get("cases", {}).items():
        last, first = case["latency_last_client"], case["latency_first_client"]
        per_window = ", ".join(_fmt(w["cpu_us_per_event"], 0) for w in case["windows"])
        lines.append(
            f"| {names.get(label, label)} | {case['hot_sockets']:,} + {case['cold_sockets']:,} "
            f"| {_fmt(case['cpu_us_per_event'], 0)} ({per_window}) "
            f"| {_fmt(case['cpu_us_per_hot_delivery'], 2)} | {_fmt(case['idle_cpu_ms_per_s'], 1)} "
            f"| {case['busy_share'] * 100:.0f} % "
            f"| {_fmt(last['p50_ms'])} / {_fmt(last['p99_ms'])} / {_fmt(last['max_ms'])} "
            f"| {_fmt(first['p50_ms'])} / {_fmt(first['p99_ms'])} "
            f"| {'yes' if case['every_socket_every_event'] else 'NO'} |")
    return "\n".join(lines)


def verdict(result: dict) -> List[str]:
    out = []
    if "ratio_b_over_a" in result:
        out.append(f"**CPU per event B / A = {result['ratio_b_over_a']:.2f}** (goal ≤ "
                   f"{GOAL_RATIO:g}: {'met' if result['goal_met'] else 'NOT met'}).")
    iso = result.get("isolation")
    if iso:
        reached = ("exactly its one socket" if iso["received_by"] == {iso["marker_owner"]: 1}
                   else iso["received_by"])
        out.append(
            f"Isolation: after case B one event for owner `{iso['marker_owner']}` reached "
            f"{reached}; "
            f"a second after it arrived {iso['cold_sockets_without_any_event']:,} of the other "
            f"{iso['cold_sockets'] - 1:,} cold sockets had received no event at all, and "
            f"{iso['hot_sockets_with_marker']} hot sockets had it: "
            f"{'ok' if iso['ok'] else 'FAILED'}.")
    return out


def markdown(result: dict, heading: str = "##") -> str:
    config, meta = result["config"], result["meta"]
    pinning = meta.get("pinning") or {}
    out = [f"{heading} Scoped fan-out (token mode)", "",
           "Requirement: with 10,000 sockets of 10,000 distinct owners plus 1,000 admin-less "
           "sockets of one owner, an event for that one owner must cost the server no more than "
           "twice what it costs with no other sockets connected.", "",
           f"notify-server in token mode (HS256; connection limits off). Every socket connects "
           f"with `?token=` a JWT of its own `sub` (owners = [sub], no admin). Case A: "
           f"{config['hot_sockets']:,} sockets of owner `{HOT_OWNER}` only; case B: the same "
           f"sockets plus {config['cold_sockets']:,} sockets of owners `{config['cold_owners']}`. "
           f"{config['events_per_window']:,} events with top-level `\"owner\": \"{HOT_OWNER}\"` "
           f"at {config['rate']:g}/s through the emitter's Lua script (XADD + PUBLISH), "
           f"{config['repeats']} time(s) per case. CPU: user + system seconds of the server "
           f"process over a {config['window_s']:g} s window holding the publishing, less the "
           f"mean of the idle windows of the same length before and after it (same sockets, no "
           + ("events; the heartbeat interval is set to the window so each holds one ping round), "
              if config["server_env"]["NOTIFY_PING_INTERVAL"] == f"{config['window_s']:g}" else
              f"events; heartbeat interval {config['server_env']['NOTIFY_PING_INTERVAL']} s), ")
           + f"over the events; per window in brackets. Latency: per event, from the publisher's "
           f"send to its arrival at the last / first hot socket; p50/p99/max over the events of "
           f"all windows. *Busy*: the server's CPU over the publishing window (well under 100 % "
           f"means it handled each event on its own, not in catch-up batches).", "",
           table(result), ""]
    out += verdict(result)
    stalls = []
    for label, case in result.get("cases", {}).items():
        runs = [run for w in case["windows"]
                for run in (w.get("slowest_events") or {}).get("runs_over_100_ms", [])]
        stalls.append(f"{label}: " + ("none" if not runs else "; ".join(
            f"{run['events']} event(s) from {run['from_s']:g} s, max {run['max_ms']:,.0f} ms"
            for run in runs)))
    out.append("Runs of consecutive events over 100 ms to the last hot socket (s after the "
               "window's first send): " + " | ".join(stalls) + ".")
    out += ["", f"Commit `{meta['git']['commit']}`"
            + (f" (uncommitted: {', '.join(meta['git']['server_code_uncommitted'])})"
               if meta["git"]["server_code_uncommitted"] else "")
            + f", {meta['started']}; "
            + (f"server pinned to CPU {_cpus(pinning['server'])}, Redis, load clients and "
               f"publisher to CPU {_cpus(pinning['redis_clients_publisher'])}"
               if pinning.get("server") else "no CPU pinning")
            + f"; load average at start {meta['load_average_at_start']}, at end "
            f"{meta.get('load_average_at_end')}. Raw figures: `bench/out/scoped.json`.", ""]
    return "\n".join(out)


# -- entry points --------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.scoped",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--hot", type=int, default=1000, help="sockets of the one owner 'hot'")
    parser.add_argument("--cold", type=int, default=10000,
                        help="sockets of distinct other owners, case B (0: case A only)")
    parser.add_argument("--cold-procs", type=int, default=2,
                        help="load-client processes holding the cold sockets")
    parser.add_argument("--events", type=int, default=1200, help="events per publishing window")
    parser.add_argument("--rate", type=float, default=50.0,
                        help="events per second (keep it well under saturation: a server that "
                             "falls behind batches events and its cost per event drops)")
    parser.add_argument("--repeats", type=int, default=2, help="publishing windows per case")
    parser.add_argument("--window", type=float,
                        help="seconds per window (default: the publishing time + --tail, "
                             "rounded up; 25 s with the defaults, the server's default "
                             "heartbeat interval)")
    parser.add_argument("--tail", type=float, default=1.0)
    parser.add_argument("--ping-interval", type=float,
                        help="the server's heartbeat interval (default: the window's length; "
                             "0 disables heartbeats, a diagnostic)")
    parser.add_argument("--pin", action="store_true",
                        help="server on CPU 0, everything else on CPU 1")
    parser.add_argument("--connect-timeout", type=float, default=120.0)
    parser.add_argument("--json", type=Path, default=BENCH / "out" / "scoped.json")
    parser.add_argument("--md", type=Path, default=BENCH / "out" / "scoped.md",
                        help="where to write the Markdown section")
    args = parser.parse_args(argv)
    if args.events < 2 or args.rate <= 0 or args.hot < 1 or args.repeats < 1:
        parser.error("need --events >= 2, --rate > 0, --hot >= 1, --repeats >= 1")
    args.cold_procs = max(1, args.cold_procs)
    return args


def run(args) -> dict:
    """The whole step; raises on a failed setup (every child stopped)."""
    from bench.main import raise_fd_limit
    raise_fd_limit()
    step = Scoped(args)
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
    for line in verdict(result):
        log(line)
    log(f"results: {args.json}; Markdown: {args.md}")
    return 0 if result["checks_passed"] and result.get("goal_met", True) else 1


if __name__ == "__main__":
    sys.exit(main())
