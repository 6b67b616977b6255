"""RESULTS.md and the latency plot, from one run's JSON.

    python -m bench.report bench/results.json   # regenerate bench/RESULTS.md and bench/latency.png

Figures only: the targets are reported against, never asserted.
"""

import collections
import json
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]

TARGETS_TEXT = {
    "p99_1000_at_20": "1,000 clients at 20 ev/s: p99 to the last client <= 20 ms",
    "cpu_per_delivery": "server CPU per delivery at 1,000 clients, 50 ev/s <= 4 us",
    "saturation_1000": "highest no-loss deliveries/s at 1,000 clients >= 150,000/s",
    "p99_10000_at_1": "10,000 clients at 1 ev/s: p99 to the last client <= 100 ms",
    "rss_per_connection": "server RSS per idle connection <= 10 KB",
    "loop_lag": "event-loop lag p99 while polling a real Celery worker <= 5 ms",
}


def _get(mapping, *keys):
    for key in keys:
        if not isinstance(mapping, dict) or key not in mapping:
            return None
        mapping = mapping[key]
    return mapping


def _fmt(value, digits: int = 1, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        text = f"{value:,.{digits}f}"
    else:
        text = f"{value:,}"
    return text + unit


def targets(results: dict) -> list:
    """[(target, measured text, met or None)] for notify-server."""
    ours = _get(results, "systems", "notify-server") or {}
    rows = []
    p99 = _get(ours, "sizes", "1000", "runs", "steady_20", "latency_last_client", "p99_ms")
    rows.append(("p99_1000_at_20", _fmt(p99, 1, " ms"), None if p99 is None else p99 <= 20))
    cpu = _get(ours, "sizes", "1000", "runs", "cpu_50", "server_cpu_us_per_delivery")
    net = _get(ours, "sizes", "1000", "runs", "cpu_50", "server_cpu_us_per_delivery_net")
    rows.append(("cpu_per_delivery", f"{_fmt(cpu, 2, ' us')} ({_fmt(net, 2, ' us')} less idle work)",
                 None if cpu is None else cpu <= 4))
    best = _get(ours, "saturation", "1000", "best_deliveries_per_s")
    rate = _get(ours, "saturation", "1000", "best_rate")
    rows.append(("saturation_1000", f"{_fmt(best, 0, '/s')} (at {_fmt(rate, 1, ' ev/s')})",
                 None if best is None else best >= 150000))
    low = _get(ours, "sizes", "10000", "runs", "low_rate_1", "latency_last_client", "p99_ms")
    rows.append(("p99_10000_at_1", _fmt(low, 1, " ms"), None if low is None else low <= 100))
    sizes = [size for size, outcome in (ours.get("sizes") or {}).items()
             if _get(outcome, "rss", "per_connection_bytes") is not None]
    if sizes:
        largest = max(sizes, key=int)
        per = ours["sizes"][largest]["rss"]["per_connection_bytes"] / 1024
        rows.append(("rss_per_connection", f"{per:.1f} KB (at M={int(largest):,})", per <= 10))
    else:
        rows.append(("rss_per_connection", "–", None))
    lag = _get(results, "loop_lag", "loop_lag_p99_ms")
    source = _get(results, "loop_lag", "loop_lag_source")
    note = "" if source == "metrics" else " (ping round trip: /metrics histogram not exported yet)"
    rows.append(("loop_lag", _fmt(lag, 2, " ms") + note, None if lag is None else lag <= 5))
    return rows


def _steady_rows(results: dict):
    for name, system in (results.get("systems") or {}).items():
        for size, outcome in sorted((system.get("sizes") or {}).items(), key=lambda kv: int(kv[0])):
            yield name, int(size), outcome


def summary_table(results: dict) -> str:
    lines = ["| system | M | connect s (conn/s) | last client p50 / p99 / max ms | first client p99 ms "
             "| deliveries/s | lost | dup | server CPU s | server µs/delivery (net) | Redis CPU s "
             "| RSS/conn KB | client CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, size, outcome in _steady_rows(results):
        connect = outcome.get("connect") or {}
        run = _get(outcome, "runs", "steady_20")
        rss = _get(outcome, "rss", "per_connection_bytes")
        if run is None:
            why = outcome.get("why") or outcome.get("error") or "no run"
            lines.append(f"| {name} | {size:,} | {_fmt(connect.get('seconds'), 2)} "
                         f"({_fmt(connect.get('per_s'), 0)}) | {why} | | | | | | | | "
                         f"{_fmt(rss / 1024 if rss else None)} | |")
            continue
        latency = run["latency_last_client"]
        mark = "" if run["kept_up"] else " ✗"
        lines.append(
            f"| {name} | {size:,} | {_fmt(connect.get('seconds'), 2)} ({_fmt(connect.get('per_s'), 0)}) "
            f"| {_fmt(latency['p50_ms'])} / {_fmt(latency['p99_ms'])} / {_fmt(latency['max_ms'])}{mark} "
            f"| {_fmt(run['latency_first_client']['p99_ms'])} "
            f"| {_fmt(run['deliveries_per_s'], 0)} | {_fmt(run['lost'])} | {_fmt(run['duplicated'])} "
            f"| {_fmt(run['server_cpu_s'], 2)} | {_fmt(run.get('server_cpu_us_per_delivery'), 2)} "
            f"({_fmt(run.get('server_cpu_us_per_delivery_net'), 2)}) "
            f"| {_fmt(run['redis_cpu_s'], 2)} | {_fmt(rss / 1024 if rss else None)} "
            f"| {_fmt(run['client_cpu_s'], 2)} |")
    return "\n".join(lines)


def _extra_runs_table(results: dict) -> str:
    lines = ["| system | M | rate ev/s | last client p50 / p99 / max ms | deliveries/s | lost "
             "| server CPU s | server µs/delivery (net) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, size, outcome in _steady_rows(results):
        for label, run in (outcome.get("runs") or {}).items():
            if label == "steady_20":
                continue
            latency = run["latency_last_client"]
            lines.append(f"| {name} | {size:,} | {run['rate']:g} | {_fmt(latency['p50_ms'])} / "
                         f"{_fmt(latency['p99_ms'])} / {_fmt(latency['max_ms'])} "
                         f"| {_fmt(run['deliveries_per_s'], 0)} | {_fmt(run['lost'])} "
                         f"| {_fmt(run['server_cpu_s'], 2)} "
                         f"| {_fmt(run.get('server_cpu_us_per_delivery'), 2)} "
                         f"({_fmt(run.get('server_cpu_us_per_delivery_net'), 2)}) |")
    return "\n".join(lines)


def _saturation_table(results: dict) -> str:
    lines = ["| system | M | highest passing rate ev/s | deliveries/s there | p99 there ms "
             "| server µs/delivery there | lowest failing rate | steps (rate: pass/fail) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, system in (results.get("systems") or {}).items():
        for size, sat in (system.get("saturation") or {}).items():
            if "error" in sat:
                lines.append(f"| {name} | {int(size):,} | error: {sat['error']} | | | | | |")
                continue
            steps = ", ".join(f"{s['rate']:g}: {_verdict(s)}" for s in sat["steps"])
            lines.append(f"| {name} | {int(size):,} | {_fmt(sat['best_rate'])} "
                         f"| {_fmt(sat['best_deliveries_per_s'], 0)} | {_fmt(sat['best_p99_ms'])} "
                         f"| {_fmt(sat['best_server_cpu_us_per_delivery'], 2)} "
                         f"| {_fmt(sat['lowest_failing_rate'])} | {steps} |")
    return "\n".join(lines)


def _verdict(step: dict) -> str:
    if step["kept_up"]:
        return "pass"
    return "fail, client-bound" if step.get("client_bound") else "fail"


def hot_spots(raw_path: Path, top: int = 15) -> dict:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own, inclusive, lines, total = (collections.Counter(), collections.Counter(),
                                    collections.Counter(), 0)
    for line in Path(raw_path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_function(frame) for frame in stack.split(";")]
        frames = [frame for frame in frames if frame]
        if not frames:
            continue
        own[frames[-1]] += samples
        lines[_function(stack.split(";")[-1], keep_line=True)] += samples
        for frame in set(frames):
            inclusive[frame] += samples

    def share(counter):
        return [{"function": name, "percent": round(100.0 * n / total, 1)}
                for name, n in counter.most_common(top)]
    return {"samples": total, "self": share(own), "inclusive": share(inclusive),
            "self_lines": share(lines)[:10]}


def _function(frame: str, keep_line: bool = False) -> Optional[str]:
    """`write_message (/…/tornado/websocket.py:123)` -> `write_message (tornado/websocket.py)`,
    or `… (tornado/websocket.py:123)` with `keep_line`."""
    frame = frame.strip()
    if not frame or frame.startswith(("process ", "thread ")):
        return None
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where if keep_line else where.rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    if path.startswith(str(ROOT)):
        path = path[len(str(ROOT)) + 1:]
    return f"{name} ({path})" if path else name


def plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 5), dpi=110)
    for name in (results.get("systems") or {}):
        points = [(size, outcome["runs"]["steady_20"]) for n, size, outcome in _steady_rows(results)
                  if n == name and _get(outcome, "runs", "steady_20", "latency_last_client", "p99_ms")]
        if not points:
            continue
        sizes = [size for size, _ in points]
        p99 = [run["latency_last_client"]["p99_ms"] for _, run in points]
        p50 = [run["latency_last_client"]["p50_ms"] for _, run in points]
        line, = axis.plot(sizes, p99, marker="o", label=f"{name} p99")
        axis.plot(sizes, p50, linestyle="--", marker=".", color=line.get_color(), label=f"{name} p50")
        failed = [(size, run["latency_last_client"]["p99_ms"]) for size, run in points if not run["kept_up"]]
        if failed:
            axis.scatter(*zip(*failed), marker="x", s=120, color="black", zorder=5)
    axis.axhline(20, color="grey", linewidth=0.8, linestyle=":")
    axis.text(100, 21, "20 ms target (1,000 clients)", fontsize=7, color="grey")
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("connections (M)")
    axis.set_ylabel("latency to the last client, ms")
    axis.set_title("Fan-out at 20 events/s: latency to the last client (x: lost events or p99 > 1 s)",
                   fontsize=9)
    axis.grid(True, which="both", linewidth=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def render(results: dict, plot_name: str) -> str:
    meta = results.get("meta") or {}
    packages = ", ".join(f"{name} {version}" for name, version in (meta.get("packages") or {}).items()
                         if version)
    pinning = meta.get("pinning") or {}
    out = ["# Fan-out benchmark results", "",
           f"Generated by `{meta.get('command', 'bench/run.sh')}` ({meta.get('mode')} mode) on "
           f"{meta.get('started')}, {meta.get('duration_s')} s, on commit "
           f"`{_get(meta, 'git', 'commit')}`"
           + (f" with uncommitted changes to {', '.join(f'`{p}`' for p in _get(meta, 'git', 'server_code_uncommitted'))}"
              if _get(meta, "git", "server_code_uncommitted") else "")
           + ". Raw figures: `results.json`; how it measures: the README's *Benchmark* section.", "",
           "## Machine", "",
           f"- {meta.get('cpus')} CPUs ({meta.get('cpu_model')}), {meta.get('memory_gb')} GB, "
           f"Linux {meta.get('kernel')}, Python {meta.get('python')}, fd limit {meta.get('fd_limit')}",
           ("- pinning: server on CPU {}, Redis + load client + publisher (+ Celery worker) on CPU {}"
            .format(pinning.get("server"), pinning.get("redis_client_publisher"))
            if pinning.get("server") else
            "- no CPU pinning: the server, Redis, the load client and the publisher share both CPUs"),
           f"- Redis: `{meta.get('redis_server')}`", f"- {packages}",
           f"- load average (1, 5, 15 min) at start {meta.get('load_average_at_start')}, at end "
           f"{meta.get('load_average_at_end')}: the machine is shared; anything above about 2 "
           "means other work competed for the two CPUs (each step records its own in results.json)",
           "",
           "## Targets (notify-server; reported, not asserted)", "",
           "| target | measured | met |", "|---|---|---|"]
    for key, measured, met in targets(results):
        out.append(f"| {TARGETS_TEXT[key]} | {measured} | "
                   f"{'–' if met is None else ('yes' if met else 'no')} |")
    out += ["", "## 20 events/s, by number of connections", "",
            "Latency is from the publisher's send to the arrival at the first / last client "
            "(per event, then p50/p99/max over events). *lost*: deliveries still missing when "
            "the step's bound ran out (5 s after the last send, or 3 s without any frame), "
            "whether dropped or only late. ✗: the step lost deliveries or its p99 passed 1 s; a "
            "system is not run at larger sizes after that. RSS/conn: the server's RSS with M idle "
            "connections minus its RSS with none, over M. CPU: user + system seconds of the one "
            "server process (daphne for the peers) over the step; *net* subtracts what the server "
            "burns with the same sockets idle (poller, pings, timers), measured for 3 s before.", "",
            summary_table(results), "", f"![latency against connections]({plot_name})", ""]
    for name, system in (results.get("systems") or {}).items():
        if system.get("stopped_at"):
            out.append(f"- **{name}**: {system['stopped_at']}.")
    out += ["", "## Other rates", "", _extra_runs_table(results), "",
            "## Saturation", "",
            "Rate doubled from 50 ev/s (from 80 % of its delivered rate for a system that failed "
            "at 20 ev/s; halved while failing), then bisected; a step passes with "
            "no loss, no duplicate, p99 to the last client under 1 s and the publisher on "
            "schedule (deliveries count as lost 2 s after the last send). After a failing step "
            "the server is restarted so its backlog cannot spill into the next. *client-bound*: "
            "the load client used 85 % or more of a CPU in that step, so the limit found may be "
            "the client's, not the server's.", "", _saturation_table(results), ""]
    lag = results.get("loop_lag") or {}
    out += ["## notify-server event-loop lag with a real Celery worker", ""]
    if "error" in lag:
        out.append(f"Failed: {lag['error']}")
    elif lag:
        out.append(f"{lag.get('connections'):,} connections, {lag.get('rate'):g} ev/s for "
                   f"{lag.get('seconds'):g} s per window; poll interval {lag.get('poll_interval_s')} s. "
                   f"First with no Celery worker (every poll waits out its 1 s inspect timeout), "
                   f"then with {lag.get('celery_worker')}. Ping: one socket sends `ping` every "
                   "20 ms and times the `pong`.")
        out += ["", "| window | loop-lag metric p99 ms | ping RTT p50 / p99 / max ms | events: p99 to "
                "last client ms | lost | server CPU s |", "|---|---:|---:|---:|---:|---:|"]
        for key, label in (("without_worker", "no Celery worker"), ("with_worker", "Celery worker polled")):
            window = lag.get(key)
            if not window:
                continue
            rtt = window["ping_rtt"]["rtt"]
            run = window["run"]
            metric = (window.get("metrics") or {}).get("p99_ms")
            out.append(f"| {label} | {_fmt(metric, 2)} | {_fmt(rtt['p50_ms'], 2)} / "
                       f"{_fmt(rtt['p99_ms'], 2)} / {_fmt(rtt['max_ms'], 2)} "
                       f"| {_fmt(run['latency_last_client']['p99_ms'])} | {_fmt(run['lost'])} "
                       f"| {_fmt(run['server_cpu_s'], 2)} |")
        if lag.get("TODO"):
            out += ["", f"TODO: {lag['TODO']}."]
        out.append("")
    profile = results.get("profile") or {}
    out += ["", "## Where notify-server spends its time (py-spy)", ""]
    if profile.get("hot_spots"):
        spots = profile["hot_spots"]
        out.append(f"{profile['connections']:,} connections at {profile['rate']:g} ev/s, "
                   f"{spots['samples']} samples at 200 Hz (idle excluded); flame graph: "
                   f"`{profile['flamegraph']}` (not committed; the run writes it).")
        out += ["", "| self % | function | | inclusive % | function |", "|---:|---|---|---:|---|"]
        for own, inc in zip(spots["self"], spots["inclusive"]):
            out.append(f"| {own['percent']} | `{own['function']}` | | {inc['percent']} | `{inc['function']}` |")
        if spots.get("self_lines"):
            out += ["", "Hottest lines (self %): " + ", ".join(
                f"`{line['function']}` {line['percent']}" for line in spots["self_lines"])]
    elif profile.get("error"):
        out.append(f"Failed: {profile['error']}")
    scoped = results.get("scoped")
    if scoped:
        from bench import scoped as scoped_step
        out += [""] + (["## Scoped fan-out (token mode)", "", f"Failed: {scoped['error']}"]
                       if "error" in scoped else [scoped_step.markdown(scoped)])
    out += ["", "## Systems", ""]
    for name, system in (results.get("systems") or {}).items():
        out.append(f"- **{name}**: {system.get('description')}; publisher: {system.get('publisher_path')}")
    out.append("")
    return "\n".join(out)


def write(results: dict, markdown_path: Path, plot_path: Path) -> None:
    plot(results, plot_path)
    markdown_path.write_text(render(results, plot_path.name))


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "bench" / "results.json")
    data = json.loads(source.read_text())
    write(data, source.parent / "RESULTS.md", source.parent / "latency.png")
