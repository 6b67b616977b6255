"""What NOTIFY_EMIT_WAIT_REPLICAS costs a writer, in the Sentinel test's setup.

A primary, one replica and three sentinels on this machine (the cluster of
tests/integration/test_sentinel.py); the emitter writes task events through
Sentinel, alternating rounds without WAIT and with `wait_replicas=1`. Prints
the time per emit (the round trip a worker's task thread waits) and writes the
figures to bench/out/wait_replicas.json.

    .venv/bin/python -m bench.wait_replicas [--events 3000] [--rounds 4]
"""

import argparse
import json
import statistics
import time
from pathlib import Path

from notify_server.worker.emitter import Emitter
from tests.support.progress_events import progress
from tests.support.sentinel import SentinelCluster

OUT = Path(__file__).resolve().parent / "out" / "wait_replicas.json"


def per_emit_us(emitter: Emitter, events: int) -> list:
    times = []
    for number in range(events):
        started = time.perf_counter()
        emitter.emit(progress("BENCH-WAIT", number))
        times.append((time.perf_counter() - started) * 1e6)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=4)
    options = parser.parse_args()
    cluster = SentinelCluster("bench-wait").start()
    try:
        plain = Emitter(None, sentinels=cluster.sentinels, master=cluster.master)
        waiting = Emitter(None, sentinels=cluster.sentinels, master=cluster.master,
                          wait_replicas=1, wait_timeout=0.1)
        figures = {"plain": [], "wait_replicas=1": []}
        for _ in range(options.rounds):
            for name, emitter in (("plain", plain), ("wait_replicas=1", waiting)):
                times = per_emit_us(emitter, options.events)
                figures[name].append({"p50_us": statistics.median(times),
                                      "p99_us": sorted(times)[int(0.99 * len(times))],
                                      "mean_us": statistics.fmean(times)})
        summary = {name: {key: statistics.median(r[key] for r in rounds)
                          for key in ("p50_us", "p99_us", "mean_us")}
                   for name, rounds in figures.items()}
        summary["ratio_p50"] = summary["wait_replicas=1"]["p50_us"] / summary["plain"]["p50_us"]
        summary["unreplicated"] = waiting.unreplicated
        OUT.parent.mkdir(exist_ok=True)
        OUT.write_text(json.dumps({"rounds": figures, "summary": summary}, indent=2))
        for name in ("plain", "wait_replicas=1"):
            row = summary[name]
            print(f"{name:16} per emit: p50 {row['p50_us']:.0f} us, p99 {row['p99_us']:.0f} us, "
                  f"mean {row['mean_us']:.0f} us")
        print(f"p50 ratio {summary['ratio_p50']:.2f}; unreplicated writes: "
              f"{summary['unreplicated']}")
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
