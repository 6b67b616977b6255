"""The worker hook's cost: a Celery worker draining queued no-op tasks, with and without it.

    bench/.venv/bin/python -m bench.hook [--tasks 3000] [--rounds 3] [--root PATH]
                                        [--compare-root PATH] [--profile] [--label TEXT]

The goal (the issue "Celery at line rate"): the hook within 5 % of a plain
worker's throughput, and at most 50 µs of worker CPU per event.

One redis-server (the embedded one) is the broker and the Redis the hook
writes to. Per case: FLUSHALL, queue `--tasks` tasks of the bench app
(bench/apps/hook_app.py: `noop(avid, user_id=...)`, no result backend) with
no worker running, then start

    celery -A hook_app worker -P prefork -c 2 --without-gossip --without-mingle
           --without-heartbeat -l WARNING [-E]

and wait until every task has run. The variants:

  plain         no hook, no -E
  hook          install(app) (2 events per task: task_started, task_completed)
  E             -E: Celery's own task events (3 per task), no hook
  hook+E        both
  hook@compare  install(app) from `--compare-root` (another checkout), with that option

The worker imports `notify_server` from `--root` (default: this checkout) or
`--compare-root`: PYTHONPATH is bench/apps, then that checkout. Every
variant's task does the same work, which is how completion is seen at the
same cost everywhere: it INCRs a Redis counter, and the first and the last
task stamp their time.

Measured per case: throughput from the first task's stamp to the last's
((N - 1) / seconds); the worker's CPU (user + system, psutil: the worker's
main process and its pool children) from the first time the counter reads
>= 1 (start-up is left out: it is reported on its own) to the moment every
task has run and, with the hook, every event is in the history stream; per
task = that CPU / the tasks run in between. Checked: the queue is empty, the
counter is N, the history holds 2N events with the hook and none without.

The variants run `--rounds` times, in order and then reversed (A B C D,
D C B A, ...), after one warm-up case. Headline: each variant's median, and
the differences taken within each round: hook − plain CPU per task, / 2 per
event, hook/plain throughput.

With `--profile`, after the rounds: one more case per `--profile-variants`
with py-spy recording the two pool children (raw stacks, by function),
summed up as the top 15 frames by own samples and the top 10 by total.

Writes bench/out/hook/hook.json (`--json`) and bench/RESULTS-hook.md (`--md`).
Every child is stopped by PID, also on error. Loopback only.
"""

import argparse
import datetime
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import psutil
import redis

from bench import procs, pyspy
from bench.procs import Child
from bench.systems import ROOT
from notify_server.dev.embedded_redis import EmbeddedRedis, find_redis_server
from notify_server.protocol.names import Keys

BENCH = ROOT / "bench"
APPS = BENCH / "apps"
OUT = BENCH / "out" / "hook"
COUNTER = "bench:hook:done"
QUEUE = "celery"
CONCURRENCY = 2
EVENTS_PER_TASK = 2          # the hook's task_started and task_completed
HISTORY_MAXLEN = 1000000     # the hook's history keeps every event of a case (checked)
GOAL_THROUGHPUT = 0.95       # "within 5 % of plain on throughput"
GOAL_EVENT_US = 50.0         # "at most 50 µs of worker CPU per event"

VARIANTS = {
    "plain": {"label": "plain worker", "hook": False, "events": False, "root": "root"},
    "hook": {"label": "install(app)", "hook": True, "events": False, "root": "root"},
    "E": {"label": "-E", "hook": False, "events": True, "root": "root"},
    "hook+E": {"label": "install(app) and -E", "hook": True, "events": True, "root": "root"},
    "hook@compare": {"label": "install(app) from --compare-root", "hook": True,
                     "events": False, "root": "compare"},
}


def log(message: str) -> None:
    print(message, flush=True)


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def checkout_state(root: Path, paths=("notify_server",)) -> dict:
    """The commit of a checkout and its uncommitted changes under `paths`."""
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.rstrip()
    changed = git("status", "--porcelain", "--", *paths)
    return {"path": str(root), "commit": git("rev-parse", "--short", "HEAD").strip(),
            "branch": git("rev-parse", "--abbrev-ref", "HEAD").strip(),
            "uncommitted": sorted(line[3:] for line in changed.splitlines())}


def imported_from(root: Path) -> str:
    """Where a worker started with `root` imports notify_server.worker from."""
    env = {**os.environ, "PYTHONPATH": f"{APPS}{os.pathsep}{root}"}
    return subprocess.run([sys.executable, "-c", "import notify_server.worker as w; "
                           "print(w.__file__)"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=60).stdout.strip()


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


class Worker:
    """One `celery worker` of the bench app, and its pool children."""

    def __init__(self, variant: str, root: Path, broker_url: str, tasks: int, *, log_dir: Path,
                 tag: str):
        spec = VARIANTS[variant]
        argv = [sys.executable, "-m", "celery", "-A", "hook_app", "worker", "-P", "prefork",
                "-c", str(CONCURRENCY), "--without-gossip", "--without-mingle",
                "--without-heartbeat", "-l", "WARNING", "-n", f"hookbench-{tag}@127.0.0.1"]
        if spec["events"]:
            argv.append("-E")
        self.child = Child(f"{tag}-worker", argv, log_dir=log_dir, cwd=root, env={
            "PYTHONPATH": f"{APPS}{os.pathsep}{root}", "BENCH_BROKER_URL": broker_url,
            "BENCH_HOOK": "1" if spec["hook"] else "0", "BENCH_COUNTER": COUNTER,
            "BENCH_TASKS": str(tasks), "NOTIFY_HISTORY_MAXLEN": str(HISTORY_MAXLEN)})
        self.started = time.monotonic()
        self.seen: set = {self.child.pid}

    def cpu(self) -> Dict[int, float]:
        readings = tree_cpu(self.child.ps)
        self.seen.update(readings)
        return readings

    def pool(self) -> List[int]:
        return [c.pid for c in self.child.ps.children()]

    def stop(self) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL by PID to any of its processes left."""
        self.child.stop(grace=10.0)
        for pid in self.seen - {self.child.pid}:
            try:
                psutil.Process(pid).send_signal(signal.SIGKILL)
            except psutil.Error:
                pass


class HookBench:
    def __init__(self, args):
        self.args = args
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.log_dir = args.json.parent / f"logs-{stamp}"
        self.redis: Optional[EmbeddedRedis] = None
        self.worker: Optional[Worker] = None
        self.recordings: List[pyspy.Recording] = []
        self.variants = [name for name in VARIANTS
                         if name != "hook@compare" or args.compare_root]
        self.roots = {"root": args.root, "compare": args.compare_root}

    def close(self) -> None:
        for recording in self.recordings:
            recording.stop()
        self.recordings = []
        if self.worker is not None:
            self.worker.stop()
            self.worker = None
        procs.stop_all()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def run(self) -> dict:
        args = self.args
        self.redis = EmbeddedRedis()
        self.redis.start()
        self.broker = redis.Redis.from_url(self.redis.url)
        result = {"meta": self.meta(), "config": {
            "tasks": args.tasks, "rounds": args.rounds, "variants": self.variants,
            "concurrency": CONCURRENCY, "labels": {n: VARIANTS[n]["label"] for n in self.variants},
            "json": str(args.json), "md": str(args.md)}, "rounds": []}
        log("-- warm-up: plain, 300 tasks")
        result["warm_up"] = self.case("plain", 300, "warm-up")
        for index in range(args.rounds):
            order = self.variants if index % 2 == 0 else list(reversed(self.variants))
            this = {"round": index + 1, "order": order, "cases": {}}
            result["rounds"].append(this)
            for name in order:
                this["cases"][name] = self.case(name, args.tasks, f"r{index + 1}-{name}")
                log(f"   round {index + 1} {name:13} {brief(this['cases'][name])}")
            self.save(result)
        summarise(result)
        self.save(result)
        if args.profile:
            result["profiles"] = {}
            for name in args.profile_variants.split(","):
                if name not in self.variants:
                    continue
                try:
                    result["profiles"][name] = self.profile(name)
                except Exception as exc:  # a failed profile must not lose the rounds
                    log(f"   profile {name} failed: {type(exc).__name__}: {exc}")
        result["meta"]["finished"] = now_iso()
        result["meta"]["load_average_at_end"] = [round(n, 2) for n in os.getloadavg()]
        return result

    def save(self, result: dict) -> None:
        self.args.json.parent.mkdir(parents=True, exist_ok=True)
        self.args.json.write_text(json.dumps(result, indent=1))

    def queue(self, tasks: int) -> float:
        """Queue `tasks` tasks with no worker running; returns the seconds it took."""
        from celery import Celery
        producer_app = Celery("hookbench-producer", broker=self.redis.url, set_as_current=False)
        started = time.monotonic()
        with producer_app.producer_or_acquire() as producer:
            for n in range(tasks):
                producer_app.send_task("hook_app.noop", args=[f"A-{n}"],
                                       kwargs={"user_id": f"u{n % 50}"}, producer=producer)
        queued = self.broker.llen(QUEUE)
        if queued != tasks:
            raise RuntimeError(f"queued {queued} of {tasks} tasks")
        return time.monotonic() - started

    def start_worker(self, variant: str, tasks: int, tag: str) -> Worker:
        root = self.roots[VARIANTS[variant]["root"]]
        self.worker = Worker(variant, root, self.redis.url, tasks, log_dir=self.log_dir, tag=tag)
        return self.worker

    def wait(self, worker: Worker, until, timeout: float, what: str, poll: float) -> None:
        deadline = time.monotonic() + timeout
        while not until():
            if not worker.child.alive():
                raise RuntimeError(f"the worker exited ({worker.child.process.returncode}) "
                                   f"before {what}; log:\n{worker.child.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {timeout} s; log:\n"
                                   f"{worker.child.log_tail()}")
            time.sleep(poll)

    def case(self, variant: str, tasks: int, tag: str, profile_into: Optional[Path] = None) -> dict:
        """One worker draining `tasks` queued tasks; its figures."""
        spec = VARIANTS[variant]
        self.broker.flushall()
        queue_s = self.queue(tasks)
        history = Keys().history_stream
        worker = self.start_worker(variant, tasks, tag)
        try:
            if profile_into is not None:
                self.wait(worker, lambda: len(worker.pool()) >= CONCURRENCY, 60, "pool", 0.005)
                self.recordings = [pyspy.Recording(pid, profile_into / f"{tag}-{pid}.txt",
                                                   log_dir=self.log_dir, name=f"{tag}-py-spy-{pid}")
                                   for pid in worker.pool()]
            self.wait(worker, lambda: self.done() >= 1, 60, "first task", 0.002)
            first_at, first_done, first_cpu = time.monotonic(), self.done(), worker.cpu()
            self.wait(worker, lambda: self.done() >= tasks, 60 + tasks / 50, "last task", 0.01)
            if spec["hook"]:
                self.wait(worker, lambda: self.broker.xlen(history) >= EVENTS_PER_TASK * tasks,
                          30, "every event in the history", 0.01)
            end_at, end_cpu = time.monotonic(), worker.cpu()
            stamps = [float(self.broker.get(f"{COUNTER}:at:{n}")) for n in (1, tasks)]
            checks = {"queue_empty": self.broker.llen(QUEUE) == 0,
                      "every_task_ran_once": self.done() == tasks,
                      "history_events": self.broker.xlen(history)
                      == (EVENTS_PER_TASK * tasks if spec["hook"] else 0)}
        finally:
            for recording in self.recordings:
                recording.stop()
            worker.stop()
            self.worker = None
        main_pid = worker.child.pid
        cpu = {pid: end_cpu[pid] - first_cpu.get(pid, 0.0) for pid in end_cpu}
        measured = tasks - first_done
        return {"variant": variant, "tasks": tasks, "queue_s": round(queue_s, 3),
                "start_to_first_task_s": round(first_at - worker.started, 3),
                "start_to_done_s": round(end_at - worker.started, 3),
                "startup_cpu_s": round(sum(first_cpu.values()), 3),
                "tasks_in_window": measured,
                "tasks_per_s": round((tasks - 1) / (stamps[1] - stamps[0]), 1),
                "cpu_s": round(sum(cpu.values()), 4),
                "cpu_per_task_us": round(sum(cpu.values()) / measured * 1e6, 1),
                "main_cpu_per_task_us": round(cpu.get(main_pid, 0.0) / measured * 1e6, 1),
                "pool_cpu_per_task_us": round(sum(v for p, v in cpu.items() if p != main_pid)
                                              / measured * 1e6, 1),
                "log_errors": log_errors(worker.child.log_path),
                "checks": checks, "checks_passed": all(checks.values())}

    def done(self) -> int:
        return int(self.broker.get(COUNTER) or 0)

    def profile(self, variant: str) -> dict:
        into = self.log_dir / "profiles"
        tag = f"profile-{variant}"
        log(f"-- profile: {variant}, {self.args.profile_tasks} tasks, py-spy on the pool children")
        case = self.case(variant, self.args.profile_tasks, tag, profile_into=into)
        files = sorted(into.glob(f"{tag}-*.txt"))
        summary = pyspy.summarise(files)
        text = pyspy.format_summary(summary, f"{variant}: the {len(files)} pool children")
        log(text)
        return {"case": case, "files": [str(f) for f in files], "summary": summary,
                "text": text}

    def meta(self) -> dict:
        from importlib import metadata
        redis_server = subprocess.run([find_redis_server(), "--version"], capture_output=True,
                                      text=True, timeout=10).stdout.strip()
        checkouts = {key: {**checkout_state(root), "imports": imported_from(root)}
                     for key, root in self.roots.items() if root}
        return {"started": now_iso(), "label": self.args.label,
                "command": " ".join(["bench/.venv/bin/python -m bench.hook", *sys.argv[1:]]),
                "bench": checkout_state(ROOT), "checkouts": checkouts,
                "cpus": os.cpu_count(), "python": platform.python_version(),
                "machine": platform.machine(), "kernel": platform.release(),
                "load_average_at_start": [round(n, 2) for n in os.getloadavg()],
                "packages": {name: metadata.version(name)
                             for name in ("celery", "kombu", "billiard", "redis", "psutil")},
                "redis_server": redis_server}


def log_errors(path: Path) -> List[str]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return [f"unreadable: {path}"]
    return [line for line in lines if "ERROR" in line or "Traceback" in line][:20]


def brief(case: dict) -> str:
    return (f"{case['tasks_per_s']:7.1f} tasks/s, {case['cpu_per_task_us']:7.1f} µs CPU/task "
            f"(main {case['main_cpu_per_task_us']:.0f}, pool {case['pool_cpu_per_task_us']:.0f}); "
            f"start-up {case['startup_cpu_s']} s CPU, first task after "
            f"{case['start_to_first_task_s']} s"
            + ("" if case["checks_passed"] else f"; CHECKS FAILED {case['checks']}"))


# -- summary ---------------------------------------------------------------------------

FIELDS = ("tasks_per_s", "cpu_per_task_us", "main_cpu_per_task_us", "pool_cpu_per_task_us",
          "startup_cpu_s", "start_to_first_task_s")
# (name, variant, its baseline): the differences taken within each round.
DIFFERENCES = (("hook_vs_plain", "hook", "plain"), ("hookE_vs_E", "hook+E", "E"),
               ("E_vs_plain", "E", "plain"), ("compare_vs_plain", "hook@compare", "plain"),
               ("hook_vs_compare", "hook", "hook@compare"))
EVENTS = {"hook_vs_plain": 2, "hookE_vs_E": 2, "E_vs_plain": 3, "compare_vs_plain": 2}


def summarise(result: dict) -> None:
    """Medians per variant; per round the differences within it, and their medians."""
    medians = {}
    for name in result["config"]["variants"]:
        cases = [this["cases"][name] for this in result["rounds"] if name in this["cases"]]
        medians[name] = {key: statistics.median(c[key] for c in cases) for key in FIELDS}
        medians[name]["each"] = {key: [c[key] for c in cases] for key in FIELDS}
    differences = []
    for this in result["rounds"]:
        row = {"round": this["round"]}
        for key, variant, base in DIFFERENCES:
            if variant in this["cases"] and base in this["cases"]:
                a, b = this["cases"][variant], this["cases"][base]
                extra = a["cpu_per_task_us"] - b["cpu_per_task_us"]
                row[key] = {"throughput_ratio": round(a["tasks_per_s"] / b["tasks_per_s"], 4),
                            "cpu_per_task_us": round(extra, 1)}
                if key in EVENTS:
                    row[key]["cpu_per_event_us"] = round(extra / EVENTS[key], 1)
        differences.append(row)
    headline = {}
    for key, _, _ in DIFFERENCES:
        rows = [row[key] for row in differences if key in row]
        if rows:
            headline[key] = {field: statistics.median(r[field] for r in rows)
                             for field in rows[0]}
            headline[key]["each"] = {field: [r[field] for r in rows] for field in rows[0]}
    result.update(medians=medians, differences=differences, headline=headline)
    cases = [c for this in result["rounds"] for c in this["cases"].values()]
    result["checks_passed"] = bool(cases) and all(c["checks_passed"] for c in cases)


# -- output ----------------------------------------------------------------------------

def _each(values, digits: int = 0) -> str:
    return ", ".join(f"{v:,.{digits}f}" for v in values)


def markdown(result: dict) -> str:
    config, meta = result["config"], result["meta"]
    med, head = result["medians"], result["headline"]
    title = "## The worker hook's cost" + (f": {meta['label']}" if meta.get("label") else "")
    out = [title, "",
           "Goal (the issue *Celery at line rate*): *the hook within 5 % of plain on throughput, "
           "at most 50 µs of worker CPU per event.*", "",
           f"**How.** A Celery worker (`-P prefork -c {config['concurrency']} --without-gossip "
           "--without-mingle --without-heartbeat -l WARNING`, `-E` where named) drains "
           f"{config['tasks']:,} no-op tasks queued before it starts (`bench/apps/hook_app.py`: "
           "`noop(avid, user_id=...)`, no result backend; each task INCRs a Redis counter, the "
           "first and the last stamp their time). One redis-server is the broker and the Redis "
           "the hook writes to. Throughput: (N − 1) / the time from the first task's stamp to "
           "the last's. Worker CPU: user + system of the worker's main process and its pool "
           "children (psutil), from the first reading of the counter ≥ 1 to every task done "
           "(and, with the hook, every event in the history stream), per task run in that "
           "window; start-up is shown on its own. "
           + (f"{config['rounds']} rounds, alternating order (A B C D, D C B A, ...), after "
              "a warm-up case; differences are taken within each round, the headline is "
              "their median (each round in brackets)." if config["rounds"] > 1
              else "One round, after a warm-up case."), ""]
    out += ["| variant | tasks/s | worker CPU µs/task | of which main process | pool children "
            "| start-up CPU s | start to first task s |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name in config["variants"]:
        m = med[name]
        out.append(f"| {name}: {config['labels'][name]} | **{m['tasks_per_s']:,.0f}** "
                   f"({_each(m['each']['tasks_per_s'])}) | **{m['cpu_per_task_us']:,.0f}** "
                   f"({_each(m['each']['cpu_per_task_us'])}) | {m['main_cpu_per_task_us']:,.0f} "
                   f"| {m['pool_cpu_per_task_us']:,.0f} | {m['startup_cpu_s']:.2f} "
                   f"| {m['start_to_first_task_s']:.2f} |")
    out += ["", "Within each round:", "",
            "| comparison | throughput ratio | extra worker CPU µs/task | per event µs |",
            "|---|---:|---:|---:|"]
    for key, variant, base in DIFFERENCES:
        if key in head:
            h, each = head[key], head[key]["each"]
            per_event = (f"**{h['cpu_per_event_us']:,.1f}** ({_each(each['cpu_per_event_us'], 1)})"
                         f" [{EVENTS[key]} events/task]" if "cpu_per_event_us" in h else "–")
            out.append(f"| {variant} vs {base} | **{h['throughput_ratio']:.3f}** "
                       f"({_each(each['throughput_ratio'], 3)}) | {h['cpu_per_task_us']:+,.1f} "
                       f"({_each(each['cpu_per_task_us'], 1)}) | {per_event} |")
    out += [""] + verdict(result) + [""]
    for name, profile in (result.get("profiles") or {}).items():
        case = profile["case"]
        out += [f"**py-spy, {name}** ({case['tasks']:,} tasks, {case['tasks_per_s']:,.0f} tasks/s "
                f"and {case['cpu_per_task_us']:,.0f} µs/task while profiled; by function, idle "
                "frames left out):", "", "```", profile["text"], "```", ""]
    checkouts = "; ".join(
        f"{key} `{c['path']}` at `{c['commit']}` ({c['branch']})"
        + (f" with uncommitted changes to {', '.join(c['uncommitted'])}" if c["uncommitted"]
           else "") + f", imports `{c['imports']}`" for key, c in meta["checkouts"].items())
    out += [f"Machine: {meta['cpus']} CPUs ({meta['machine']}, Linux {meta['kernel']}), shared "
            "and noisy; Python " + meta["python"] + ", "
            + ", ".join(f"{k} {v}" for k, v in meta["packages"].items())
            + f", {meta['redis_server'].split(' sha=')[0]}. Worker code: {checkouts}. Bench "
            f"commit `{meta['bench']['commit']}`. Load average at start "
            f"{meta['load_average_at_start']}, at end {meta.get('load_average_at_end')}; "
            f"{meta['started']}. Command: `{meta['command']}`. Checks (queue empty, every task "
            "once, 2 events per task in the history with the hook and none without): "
            + ("passed in every case." if result["checks_passed"] else "FAILED (see the JSON)."),
            ""]
    return "\n".join(out)


def verdict(result: dict) -> List[str]:
    head, out = result["headline"], []
    hook = head.get("hook_vs_plain")
    if hook:
        fast = hook["throughput_ratio"] >= GOAL_THROUGHPUT
        cheap = hook["cpu_per_event_us"] <= GOAL_EVENT_US
        out.append(f"- **The hook against plain**: throughput ratio {hook['throughput_ratio']:.3f} "
                   f"(goal ≥ {GOAL_THROUGHPUT}: {'met' if fast else 'not met'}), "
                   f"{hook['cpu_per_event_us']:,.1f} µs of worker CPU per event (goal ≤ "
                   f"{GOAL_EVENT_US:g}: {'met' if cheap else 'not met'}).")
    compare = head.get("hook_vs_compare")
    if compare:
        out.append(f"- **This checkout's hook against --compare-root's**: throughput ratio "
                   f"{compare['throughput_ratio']:.3f}, {compare['cpu_per_task_us']:+,.1f} µs "
                   "of worker CPU per task.")
    return out


# -- entry point -----------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m bench.hook",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=3000, help="tasks queued per case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--root", type=Path, default=ROOT,
                        help="the checkout whose notify_server the worker imports")
    parser.add_argument("--compare-root", type=Path,
                        help="another checkout: its hook runs as the variant hook@compare")
    parser.add_argument("--profile", action="store_true",
                        help="after the rounds, py-spy the pool children of one more case per "
                             "--profile-variants")
    parser.add_argument("--profile-variants", default="plain,hook,hook@compare")
    parser.add_argument("--profile-tasks", type=int, default=6000)
    parser.add_argument("--label", default="", help="said in the Markdown's title")
    parser.add_argument("--json", type=Path, default=OUT / "hook.json")
    parser.add_argument("--md", type=Path, default=BENCH / "RESULTS-hook.md")
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.rounds < 1 or args.profile_tasks < 2:
        parser.error("need --tasks >= 2, --profile-tasks >= 2, --rounds >= 1")
    args.root = args.root.resolve()
    args.json, args.md = args.json.resolve(), args.md.resolve()  # py-spy runs elsewhere
    args.compare_root = args.compare_root.resolve() if args.compare_root else None
    return args


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`: every child is stopped


def main(argv=None) -> int:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    step = HookBench(args)
    try:
        result = step.run()
    finally:
        step.close()
    step.save(result)
    args.md.write_text(markdown(result))
    for line in verdict(result):
        log(line)
    log(f"results: {args.json}; Markdown: {args.md}")
    return 0 if result["checks_passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
