"""Server memory per idle WebSocket: this tree against an older commit, in one run.

    bench/.venv/bin/python -m bench.memory [--sizes 1000,10000] [--rounds 2]
        [--commit SHA] [--baseline] [--no-pings] [--trace] [--md bench/RESULTS-memory.md]

Starts the embedded redis-server, then for each round, each size M and each
server in turn (the order reversed every other round, so a drift of the
machine does not favour one): the server (`python run.py`, configured as
`bench.systems` does), one throw-away socket, the server's RSS, M idle
sockets from the load client (`bench.loadclient`, one process, a source
address per 5,000), a pause, the RSS again. RSS/conn is the difference over
M, as in bench/RESULTS.md. Then the sockets are closed and the server is
stopped (by PID).

`--commit SHA` adds that commit's server, extracted with `git archive` into
bench/out/tree-SHA (run with the same interpreter and load client).
`--baseline` adds bench/peers/tornado_baseline.py. `--no-pings` sets
NOTIFY_PING_INTERVAL=0 (default: the server's own default, 25 s; no ping
round falls into a measurement unless it is longer than that).

`--trace` starts each server under tracemalloc (bench/traced_run.py) and,
instead of RSS, compares the snapshots before and after the M sockets: the
allocation sites by traceback, in bytes and objects per connection. Its
figures are Python allocations only (no malloc or kernel overhead), and the
RSS of a traced process is not comparable with an untraced one.

Prints each figure as it comes and writes bench/out/memory-*.json and, with
`--md`, the Markdown summary.
"""

import argparse
import datetime
import json
import math
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Dict, List, Optional

from bench import procs
from bench.procs import Child, RpcChild, free_port, wait_for_port
from bench.systems import NO_LIMITS, PEERS, ROOT
from notify_server.dev.embedded_redis import EmbeddedRedis

OUT = ROOT / "bench" / "out"
SETTLE_S = 2.0       # after the last socket opened, before the RSS is read
TOP_SITES = 12       # allocation sites listed per server in --trace mode


def log(message: str) -> None:
    print(message, flush=True)


class Server:
    """One server under test: a tree holding run.py, or the bare Tornado baseline."""

    def __init__(self, label: str, root: Path, commit: str, baseline: bool = False):
        self.label, self.root, self.commit, self.baseline = label, root, commit, baseline

    def start(self, redis_url: str, log_dir: Path, env: Dict[str, str],
              snapshot: Optional[Path]) -> Child:
        port = free_port()
        if self.baseline:
            script = [str(PEERS / "tornado_baseline.py"), "--redis-url", redis_url]
        else:
            script = ["run.py", "--host", "127.0.0.1"]
        argv = [sys.executable, *([str(ROOT / "bench" / "traced_run.py")] if snapshot else []),
                *script, "--port", str(port)]
        child_env = {"REDIS_URL": redis_url, "NOTIFY_LOG_LEVEL": "WARNING", **NO_LIMITS, **env}
        if snapshot is not None:
            child_env["TRACED_SNAPSHOT"] = str(snapshot)
        child = Child(f"{self.label}-{port}", argv, log_dir=log_dir, cwd=self.root, env=child_env)
        wait_for_port(child, port, timeout=120.0)  # tracemalloc slows start-up a lot
        child.url = f"ws://127.0.0.1:{port}/ws/tasks/"
        return child


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True,
                          text=True).stdout.strip()


def extract(commit: str) -> Server:
    """The server of `commit`, as `git archive` gives it, under bench/out/."""
    full = git("rev-parse", "--verify", f"{commit}^{{commit}}")
    tree = OUT / f"tree-{full[:12]}"
    if not (tree / "run.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.Popen(["git", "archive", full], cwd=ROOT, stdout=subprocess.PIPE)
        subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
        if archive.wait() != 0:
            raise RuntimeError(f"git archive {full} failed")
    return Server(f"old-{full[:7]}", tree, full)


def current_server() -> Server:
    head = git("rev-parse", "HEAD")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return Server("new", ROOT, head + ("+changes" if dirty else ""))


class MemoryBench:
    def __init__(self, args, servers: List[Server]):
        self.args, self.servers = args, servers
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_dir = OUT / f"logs-memory-{stamp}"
        self.json_path = OUT / f"memory-{stamp}.json"
        self.env = {"NOTIFY_PING_INTERVAL": "0"} if args.no_pings else {}
        self.results = {"meta": {"started": stamp, "argv": sys.argv[1:],
                                 "servers": {s.label: s.commit for s in servers},
                                 "env": self.env, "settle_s": SETTLE_S,
                                 "fd_limit": raise_fd_limit(),
                                 "mode": "tracemalloc" if args.trace else "rss"},
                        "runs": []}

    def run(self) -> dict:
        self.redis = EmbeddedRedis()
        self.redis.start()
        self.client = RpcChild("loadclient", [sys.executable, "-m", "bench.loadclient"],
                               log_dir=self.log_dir, cwd=ROOT)
        for round_number in range(self.args.rounds):
            order = self.servers if round_number % 2 == 0 else self.servers[::-1]
            for size in self.args.sizes:
                for server in order:
                    outcome = self.measure(server, size)
                    outcome.update(round=round_number + 1)
                    self.results["runs"].append(outcome)
                    self.save()
        return self.results

    def measure(self, server: Server, size: int) -> dict:
        snapshot = (self.log_dir / f"snapshot-{server.label}-{size}.tm") if self.args.trace else None
        child = server.start(self.redis.url, self.log_dir, self.env, snapshot)
        snapshot_0 = snapshot and snapshot.with_suffix(".0.tm")
        try:
            time.sleep(1.0)
            self.client.call("connect", timeout=90, url=child.url, count=1, deadline_s=30.0)
            self.client.call("close", timeout=60)
            time.sleep(0.5)
            before = self.sample(child, snapshot, keep_as=snapshot_0)
            sources = [f"127.0.0.{2 + n}" for n in range(max(1, math.ceil(size / 5000)))]
            connect = self.client.call("connect", timeout=150, url=child.url, count=size,
                                       concurrency=200, sources=sources, deadline_s=120.0)
            time.sleep(SETTLE_S)
            after = self.sample(child, snapshot)
            outcome = {"server": server.label, "commit": server.commit, "size": size,
                       "connected": connect["connected"], "connect_s": connect["seconds"],
                       "alive": child.alive()}
            if snapshot is None:
                outcome.update(rss_0_bytes=before, rss_m_bytes=after,
                               per_connection_bytes=round((after - before) / size, 1))
                log(f"{server.label:>12} M={size:>6,}: {connect['connected']:,} connected, "
                    f"RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB, "
                    f"{outcome['per_connection_bytes'] / 1024:.2f} KB/conn")
            else:
                outcome["traced"] = traced_difference(before, after, size)
                log(f"{server.label:>12} M={size:>6,}: traced "
                    f"{outcome['traced']['per_connection_bytes'] / 1024:.2f} KB/conn")
                for site in outcome["traced"]["top"][:TOP_SITES]:
                    log(f"    {site['bytes_per_connection']:8.1f} B {site['count_per_connection']:5.2f}"
                        f" obj  {site['where']}")
            return outcome
        finally:
            self.client.call("close", timeout=60)
            child.stop()

    def sample(self, child: Child, snapshot: Optional[Path], keep_as: Optional[Path] = None):
        """The server's RSS now; in --trace mode its tracemalloc snapshot
        (the file renamed to `keep_as` once read, if given)."""
        if snapshot is None:
            return child.rss()
        snapshot.unlink(missing_ok=True)
        os.kill(child.pid, signal.SIGUSR1)
        deadline = time.monotonic() + 60
        while not snapshot.exists():
            if time.monotonic() > deadline or not child.alive():
                raise RuntimeError(f"{child.name} wrote no snapshot; log:\n{child.log_tail()}")
            time.sleep(0.1)
        taken = tracemalloc.Snapshot.load(str(snapshot))
        if keep_as is not None:
            snapshot.replace(keep_as)
        return taken

    def close(self) -> None:
        procs.stop_all()
        if getattr(self, "redis", None) is not None:
            self.redis.stop()

    def save(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        self.json_path.write_text(json.dumps(self.results, indent=1))


def traced_difference(before, after, size: int) -> dict:
    """What the M sockets added to the traced heap, by allocation site (the
    innermost frame of this tree or Tornado that is not the standard library,
    with the frame that called it)."""
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    before, after = before.filter_traces(ignore), after.filter_traces(ignore)
    total = sum(s.size for s in after.statistics("filename")) - sum(
        s.size for s in before.statistics("filename"))
    sites = []
    for diff in after.compare_to(before, "traceback"):
        if diff.size_diff <= 0:
            continue
        sites.append({"bytes_per_connection": round(diff.size_diff / size, 1),
                      "count_per_connection": round(diff.count_diff / size, 2),
                      "where": describe(diff.traceback)})
    merged: Dict[str, dict] = {}
    for site in sites:
        into = merged.setdefault(site["where"], {"bytes_per_connection": 0.0,
                                                 "count_per_connection": 0.0,
                                                 "where": site["where"]})
        into["bytes_per_connection"] += site["bytes_per_connection"]
        into["count_per_connection"] += site["count_per_connection"]
    top = sorted(merged.values(), key=lambda s: -s["bytes_per_connection"])
    for site in top:
        site["bytes_per_connection"] = round(site["bytes_per_connection"], 1)
        site["count_per_connection"] = round(site["count_per_connection"], 2)
    return {"per_connection_bytes": round(total / size, 1), "top": top[:40]}


def describe(traceback) -> str:
    """`file:line` of the innermost frame outside the standard library, and of its caller."""
    frames = [f for f in traceback if "/lib/python3" not in f.filename
              or "site-packages" in f.filename]
    frames = frames or list(traceback)
    # tracemalloc lists the most recent frame last.
    return " < ".join(f"{short(f.filename)}:{f.lineno}" for f in reversed(frames[-2:]))


def short(filename: str) -> str:
    for marker in ("site-packages/", "/bench/out/tree-", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def summarise(results: dict) -> Dict[str, Dict[int, List[float]]]:
    """server label -> size -> the per-connection figures (KB) of its rounds."""
    table: Dict[str, Dict[int, List[float]]] = {}
    for run in results["runs"]:
        figure = (run.get("traced") or {}).get("per_connection_bytes", run.get("per_connection_bytes"))
        if figure is not None:
            table.setdefault(run["server"], {}).setdefault(run["size"], []).append(figure / 1024)
    return table


def markdown(results: dict) -> str:
    meta = results["meta"]
    traced = meta["mode"] == "tracemalloc"
    unit = "traced KB/conn" if traced else "RSS/conn KB"
    lines = ["# Memory per idle WebSocket", "",
             f"Run {meta['started']}: `bench/.venv/bin/python -m bench.memory "
             f"{' '.join(meta['argv'])}`.", ""]
    lines += [f"- `{label}`: {commit}" for label, commit in meta["servers"].items()]
    lines += ["", f"| server | M | {unit}, each round | mean |", "| --- | --- | --- | --- |"]
    for label, sizes in summarise(results).items():
        for size, figures in sorted(sizes.items()):
            lines.append(f"| {label} | {size:,} | {', '.join(f'{f:.2f}' for f in figures)} | "
                         f"{statistics.mean(figures):.2f} |")
    if traced:
        for run in results["runs"]:
            if run["round"] != 1:
                continue
            lines += ["", f"Top allocation sites, {run['server']}, M={run['size']:,} "
                          "(bytes and objects per connection):", "",
                      "| B/conn | objects/conn | where (innermost < caller) |", "| --- | --- | --- |"]
            lines += [f"| {s['bytes_per_connection']:.1f} | {s['count_per_connection']:.2f} | "
                      f"`{s['where']}` |" for s in run["traced"]["top"][:TOP_SITES]]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000",
                        type=lambda text: [int(n) for n in text.split(",")])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--commit", help="also measure this commit's server (git archive)")
    parser.add_argument("--baseline", action="store_true",
                        help="also measure bench/peers/tornado_baseline.py")
    parser.add_argument("--no-pings", action="store_true", help="NOTIFY_PING_INTERVAL=0")
    parser.add_argument("--trace", action="store_true",
                        help="tracemalloc snapshots instead of RSS (allocation sites per socket)")
    parser.add_argument("--md", type=Path, help="write the Markdown summary here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    servers = ([extract(args.commit)] if args.commit else []) + [current_server()]
    if args.baseline:
        servers.append(Server("tornado-baseline", ROOT, "bench/peers/tornado_baseline.py",
                              baseline=True))
    bench = MemoryBench(args, servers)
    try:
        results = bench.run()
    except KeyboardInterrupt:
        log("interrupted; stopping every child")
        return 130
    finally:
        bench.close()
        bench.save()
    text = markdown(results)
    if args.md:
        args.md.write_text(text)
    log(f"results: {bench.json_path}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
