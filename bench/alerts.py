"""Failure alerts: how fast they arrive, how a burst drains, what the sender costs the leader.

On a redis-server of its own (the embedded one), a real server (`run.py`) posting to a local
`tests.support.alert_receiver.AlertReceiver`:

  latency  50 failures one at a time: from the event's XADD (its stream id) to the
           receiver's 204, p50/p95/max.
  burst    1,000 failures at once (NOTIFY_ALERT_PER_MINUTE=2000): until the last is posted.
  cost     the server process's CPU (utime + stime, /proc) per event while N unmatched
           events (task_completed) are written, with one webhook against with none; with
           the webhook it is measured until its sender kept the last event's id.

    .venv/bin/python -m bench.alerts [--events 20000] [--md bench/RESULTS-alerts.md]

The figures are printed and written, with the command and the time, to --md.
"""

import argparse
import datetime
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import redis

from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.protocol import task_events as ev
from notify_server.protocol.names import Keys
from notify_server.worker.emitter import Emitter
from tests.support.alert_receiver import AlertReceiver
from tests.support.processes import start_server


FIGURES = []  # the lines printed, for the Markdown file


def say(line: str) -> None:
    print(line, flush=True)
    FIGURES.append(line)


class StampedPosts(list):
    """The receiver's posts, each arrival time kept by alert id."""

    def __init__(self):
        super().__init__()
        self.arrived = {}

    def append(self, post):
        self.arrived[post.alert_id] = time.time()
        super().append(post)


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency_and_burst(url: str) -> None:
    receiver = AlertReceiver().start()
    receiver.posts = StampedPosts()
    server, _ = start_server(url, name="bench-alerts", env={
        "NOTIFY_ALERT_WEBHOOKS": receiver.url, "NOTIFY_ALERT_PER_MINUTE": "2000"})
    try:
        server.wait_for_line("sending after")
        emitter = Emitter(url)
        for number in range(50):
            emitter.emit(ev.task_failed(f"t-{uuid.uuid4().hex[:8]}", "A", "E: x"),
                         record={"name": "bench.one"})
            emitter.flush()
            receiver.wait_for_posts(number + 1)
        lags = sorted((receiver.posts.arrived[p.alert_id] - int(p.alert_id.split("-")[0]) / 1e3)
                      * 1e3 for p in receiver.posts)
        say(f"latency: {len(lags)} alerts, p50 {statistics.median(lags):.1f} ms, "
              f"p95 {lags[int(len(lags) * 0.95)]:.1f} ms, max {lags[-1]:.1f} ms")
        started = time.monotonic()
        for number in range(1000):
            emitter.emit(ev.task_failed(f"b-{number}", "A", "E: x"), record={"name": "bench.b"})
        emitter.flush()
        receiver.wait_for_posts(1050, timeout=120)
        say(f"burst: 1000 alerts posted one by one in {time.monotonic() - started:.2f} s")
    finally:
        server.stop()
        receiver.stop()


def cost(url: str, events: int, webhook: bool) -> float:
    receiver = AlertReceiver().start()
    env = {"NOTIFY_ALERT_WEBHOOKS": receiver.url} if webhook else {}
    server, _ = start_server(url, name="bench-alerts-cost", env=env)
    client = redis.Redis.from_url(url)
    try:
        if webhook:
            server.wait_for_line("sending after")
        emitter = Emitter(url)
        before = cpu_seconds(server.process.pid)
        for number in range(events):
            emitter.emit(ev.task_completed(f"c-{number}", "A", "ok"), record={"name": "bench.c"})
        emitter.flush(timeout=120)
        last = client.xrevrange(Keys().history_stream, "+", "-", count=1)[0][0]
        deadline = time.monotonic() + 60
        while webhook and client.get(Keys().alert_position(receiver.url)) != last:
            assert time.monotonic() < deadline, "the sender did not catch up"
            time.sleep(0.05)
        time.sleep(0.5)  # the relay's last batch
        return (cpu_seconds(server.process.pid) - before) / events * 1e6
    finally:
        client.close()
        server.stop()
        receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--md", type=Path, default=Path(__file__).parent / "RESULTS-alerts.md")
    options = parser.parse_args()
    store = EmbeddedRedis()
    store.start()
    try:
        latency_and_burst(store.url)
        without = cost(store.url, options.events, webhook=False)
        with_one = cost(store.url, options.events, webhook=True)
        say(f"cost: server CPU per unmatched event {without:.0f} us without a webhook, "
              f"{with_one:.0f} us with one ({options.events} events)")
    finally:
        store.stop()
    options.md.write_text(
        "## Failure alerts: latency, a burst, the sender's cost\n\n"
        + "".join(f"- {line}\n" for line in FIGURES)
        + f"\nMachine: {os.cpu_count()} CPUs, shared and noisy; load average at end "
        f"{[round(x, 2) for x in os.getloadavg()]}; "
        f"{datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}. "
        f"Command: `.venv/bin/python -m bench.alerts {' '.join(sys.argv[1:])}`.\n")


if __name__ == "__main__":
    main()
