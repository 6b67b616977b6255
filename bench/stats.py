"""Pure helpers of the benchmark: reading a frame cheaply, percentiles, the
saturation search. No I/O, no third-party imports (unit-tested in
tests/unit/test_bench_stats.py).

Every benchmark event carries, first in its `data`, `"seq": N` and `"t": T`
(the publisher's `time.monotonic()` when it sent the event). The load client
finds them with a byte scan instead of a JSON parse, so it stays cheap per frame.
"""

import math
from typing import List, Optional, Sequence

SEQ_KEY = b'"seq":'
SENT_KEY = b'"t":'


def scan_seq(frame: bytes) -> int:
    """The sequence number of a benchmark event frame, or -1 for any other frame.

    Accepts compact (`"seq":5`) and spaced (`"seq": 5`) JSON, as orjson and
    Python's json write them. The number must be followed by `,` or `}`.
    """
    start = frame.find(SEQ_KEY)
    if start < 0:
        return -1
    start += len(SEQ_KEY)
    end = frame.find(b",", start)
    if end < 0:
        end = frame.find(b"}", start)
    try:
        return int(frame[start:end])
    except ValueError:
        return -1


def scan_sent(frame: bytes) -> float:
    """The send time `"t": T` of a benchmark event frame, or NaN if absent."""
    start = frame.find(SENT_KEY)
    if start < 0:
        return math.nan
    start += len(SENT_KEY)
    end = frame.find(b",", start)
    if end < 0:
        end = frame.find(b"}", start)
    try:
        return float(frame[start:end])
    except ValueError:
        return math.nan


def percentile(values: Sequence[float], fraction: float) -> Optional[float]:
    """The `fraction` (0..1) percentile by the nearest-rank method; None if empty.

    Nearest rank never invents a value that was not measured: p99 of 100
    samples is the 99th smallest, p100 the maximum.
    """
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict:
    """p50 / p99 / max of durations in seconds, reported in milliseconds."""
    def ms(value):
        return None if value is None else round(value * 1000.0, 3)
    return {"p50_ms": ms(percentile(seconds, 0.50)), "p99_ms": ms(percentile(seconds, 0.99)),
            "max_ms": ms(max(seconds) if seconds else None), "n": len(seconds)}


def histogram_quantile(buckets: List[tuple], fraction: float) -> Optional[float]:
    """Prometheus-style quantile of a cumulative histogram.

    `buckets` is [(upper_bound, cumulative_count), ...] sorted by bound, the
    last bound being +inf. Interpolates linearly inside the bucket, as
    PromQL's histogram_quantile does; returns the previous bound if the rank
    falls in the +inf bucket. None when the histogram is empty.
    """
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = fraction * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


def parse_prometheus_histogram(text: str, name: str) -> Optional[dict]:
    """The buckets, sum and count of histogram `name` in Prometheus text format.

    Returns {"buckets": [(le, cumulative)], "sum": s, "count": n} summed over
    all label sets, or None when the histogram is not in `text`.
    """
    buckets, total, count, seen = {}, 0.0, 0.0, False
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        try:
            number = float(value)
        except ValueError:
            continue
        if series.startswith(name + "_bucket"):
            le = series.split('le="', 1)[1].split('"', 1)[0] if 'le="' in series else None
            if le is None:
                continue
            bound = math.inf if le in ("+Inf", "inf", "Inf") else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + number
            seen = True
        elif series.split("{")[0] == name + "_sum":
            total += number
            seen = True
        elif series.split("{")[0] == name + "_count":
            count += number
            seen = True
    if not seen:
        return None
    return {"buckets": sorted(buckets.items()), "sum": total, "count": count}


def histogram_delta(before: Optional[dict], after: dict) -> dict:
    """`after` minus `before`: the observations made between two scrapes."""
    if before is None:
        return after
    earlier = dict(before["buckets"])
    return {"buckets": [(bound, count - earlier.get(bound, 0.0)) for bound, count in after["buckets"]],
            "sum": after["sum"] - before["sum"], "count": after["count"] - before["count"]}


class RateSearch:
    """Finds the highest rate that passes: doubles from `start` until a step
    fails (halves while the very first steps fail), then bisects between the
    best pass and the lowest failure until they are within `resolution`
    (a ratio) or `max_steps` steps were run.

    Use: `while (rate := search.next_rate()) is not None: search.record(rate, ok)`.
    """

    def __init__(self, start: float, *, max_steps: int = 9, resolution: float = 1.15,
                 floor: float = 1.0, ceiling: float = 100000.0):
        self.start, self.max_steps, self.resolution = start, max_steps, resolution
        self.floor, self.ceiling = floor, ceiling
        self.best: Optional[float] = None
        self.lowest_failure: Optional[float] = None
        self.steps: List[tuple] = []

    def next_rate(self) -> Optional[float]:
        if len(self.steps) >= self.max_steps:
            return None
        best, failure = self.best, self.lowest_failure
        if best is None and failure is None:
            return self.start
        if failure is None:
            return None if best >= self.ceiling else min(best * 2, self.ceiling)
        if best is None:
            rate = failure / 2
            return None if rate < self.floor else rate
        if failure / best <= self.resolution:
            return None
        return round((best + failure) / 2, 1)

    def record(self, rate: float, passed: bool) -> None:
        self.steps.append((rate, passed))
        if passed:
            self.best = rate if self.best is None else max(self.best, rate)
        else:
            self.lowest_failure = rate if self.lowest_failure is None else min(
                self.lowest_failure, rate)
