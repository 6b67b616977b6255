"""The benchmark's pure helpers: the frame byte scan, percentiles, the rate search.

These test the measuring instrument only; no benchmark runs in the test suite.
"""

import json
import math

import orjson

from bench.stats import (RateSearch, histogram_delta, histogram_quantile, parse_prometheus_histogram,
                         percentile, scan_sent, scan_seq)


def frame(encoder, seq=42, sent=12.5):
    return encoder({"type": "task_progress", "data": {"seq": seq, "t": sent, "avid": "A"},
                    "id": "1-0"})


def test_scan_reads_seq_and_send_time_from_compact_and_spaced_json():
    for encoder in (orjson.dumps, lambda m: json.dumps(m).encode()):
        assert scan_seq(frame(encoder)) == 42
        assert scan_sent(frame(encoder)) == 12.5


def test_scan_reads_seq_as_the_last_key_of_an_object():
    assert scan_seq(b'{"data":{"seq":7}}') == 7


def test_frames_without_a_sequence_number_are_not_events():
    assert scan_seq(b'{"type":"queue_status","data":{"active_tasks":[]}}') == -1
    assert scan_seq(b'{"data":{"seq":"x"}}') == -1
    assert math.isnan(scan_sent(b'{"type":"pong"}'))


def test_percentile_is_nearest_rank_and_never_invents_a_value():
    values = list(range(1, 101))
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) is None


def test_histogram_quantile_interpolates_inside_the_bucket():
    buckets = [(0.001, 50.0), (0.01, 90.0), (0.1, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(buckets, 0.5) == 0.001
    assert math.isclose(histogram_quantile(buckets, 0.7), 0.001 + 0.009 * 0.5)
    assert histogram_quantile([(0.1, 0.0), (math.inf, 0.0)], 0.99) is None


def test_prometheus_histogram_is_parsed_and_differenced():
    text = "\n".join([
        "# TYPE lag histogram",
        'lag_bucket{le="0.005"} 8', 'lag_bucket{le="0.05"} 10', 'lag_bucket{le="+Inf"} 10',
        "lag_sum 0.07", "lag_count 10", "other_metric 3"])
    after = parse_prometheus_histogram(text, "lag")
    assert after == {"buckets": [(0.005, 8.0), (0.05, 10.0), (math.inf, 10.0)],
                     "sum": 0.07, "count": 10.0}
    before = {"buckets": [(0.005, 4.0), (0.05, 4.0), (math.inf, 4.0)], "sum": 0.01, "count": 4.0}
    assert histogram_delta(before, after)["buckets"] == [(0.005, 4.0), (0.05, 6.0), (math.inf, 6.0)]
    assert parse_prometheus_histogram("other_metric 3", "lag") is None


def test_rate_search_doubles_then_bisects_to_the_highest_passing_rate():
    search, capacity = RateSearch(50, max_steps=12, resolution=1.1), 330
    while (rate := search.next_rate()) is not None:
        search.record(rate, rate <= capacity)
    rates = [rate for rate, _ in search.steps]
    assert rates[:4] == [50, 100, 200, 400]
    assert search.best <= capacity < search.lowest_failure
    assert search.lowest_failure / search.best <= 1.1


def test_rate_search_halves_while_the_first_steps_fail_and_stops_at_its_floor():
    search = RateSearch(50, floor=5)
    while (rate := search.next_rate()) is not None:
        search.record(rate, False)
    assert [rate for rate, _ in search.steps] == [50, 25, 12.5, 6.25]
    assert search.best is None
