"""celery-exporter's metrics, scraped from real runs, and the Grafana dashboard that reads them.

Real processes: a redis-server, a Celery worker with the hook
(`tests.support.hooked_app`), one server (which then holds the poller lease),
or two sharing the Redis. /metrics is parsed with prometheus_client's own
parser (`scrape`); each counter is checked by the exact change the test caused.
"""

import json
import re
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

from celery import Celery

from tests.support.http_probe import scrape, wait_for_first_poll
from tests.support.processes import start_server, start_worker
from tests.support.tasks import unique_avid
from tests.support.waiting import eventually

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "celery-dashboard.json"
HOOKED = "tests.support.hooked_app"
STATES = ("received", "started", "succeeded", "failed", "retried", "revoked", "rejected")
LEADER = ("notify_poller_leader", ())


def key(metric: str, **labels: str) -> tuple:
    return (metric, tuple(sorted(labels.items())))


def change(before: dict, after: dict, sample: tuple) -> float:
    return after.get(sample, 0.0) - before.get(sample, 0.0)


def counter(state: str, name: str, **more: str) -> tuple:
    return key(f"celery_task_{state}_total", name=name, **more)


def runtime_count(name: str) -> tuple:
    return key("celery_task_runtime_count", name=name)


def run_the_tasks(producer: Celery) -> Dict[tuple, float]:
    """Send tasks that succeed, fail, retry and get revoked; the counter
    changes they must cause, by sample."""
    for _ in range(3):
        producer.send_task("hooked.succeed", args=[unique_avid("CM-OK")])
    for _ in range(2):
        producer.send_task("hooked.fail", args=[unique_avid("CM-BAD")])
    producer.send_task("hooked.flaky", args=[unique_avid("CM-FLAKY")], kwargs={"failures": 2})
    # Revoked before it is sent: the worker drops it when it arrives, or at the latest when it
    # is due (task_revoked either way).
    revoked = str(uuid.uuid4())
    producer.control.revoke(revoked)
    producer.send_task("hooked.gate", args=[unique_avid("CM-REV"), "never-set"], countdown=2,
                       task_id=revoked)
    return {counter("started", "hooked.succeed"): 3, counter("succeeded", "hooked.succeed"): 3,
            runtime_count("hooked.succeed"): 3,
            counter("started", "hooked.fail"): 2,
            counter("failed", "hooked.fail", exception="ValueError"): 2,
            counter("started", "hooked.flaky"): 3, counter("retried", "hooked.flaky"): 2,
            counter("succeeded", "hooked.flaky"): 1, runtime_count("hooked.flaky"): 1,
            counter("revoked", "hooked.gate"): 1}


def task_samples(samples: dict) -> Dict[tuple, float]:
    """The task counters and runtime counts of a scrape (not their `_created`)."""
    return {sample: value for sample, value in samples.items()
            if re.fullmatch(r"celery_task_\w+_total|celery_task_runtime_count", sample[0])}


def moved(before: dict, after: dict) -> Dict[tuple, float]:
    return {sample: change(before, after, sample) for sample in set(before) | set(after)
            if change(before, after, sample)}


async def test_task_counters_runtime_and_gauges_move_by_exactly_what_the_tasks_did(make_redis):
    redis = make_redis()
    worker = start_worker(redis.url, "cmworker@cm-host", concurrency=2, app=HOOKED)
    server, port = start_server(redis.url, name="server-celery-metrics")
    producer = Celery("celery-metrics-producer", broker=redis.url, set_as_current=False)
    try:
        wait_for_first_poll(port)
        await eventually(lambda: scrape(port), lambda now: now.get(LEADER) == 1)
        before = await scrape(port)

        expected = run_the_tasks(producer)
        after = await eventually(
            lambda: scrape(port),
            lambda now: moved(task_samples(before), task_samples(now)) == expected)

        assert after[key("celery_task_runtime_sum", name="hooked.succeed")] > 0
        assert after[key("celery_task_runtime_bucket", name="hooked.succeed", le="+Inf")] >= 3
        # Every state of a name seen is there, at 0 when nothing happened (celery-exporter's way).
        for state in STATES:
            extra = {"exception": ""} if state == "failed" else {}
            assert counter(state, "hooked.succeed", **extra) in after
        assert after[key("celery_worker_up", hostname="cm-host")] == 1
        assert key("celery_worker_tasks_active", hostname="cm-host") in after
        assert key("celery_queue_length", queue_name="celery") in after

        missing = dashboard_series_missing_from(after)
        assert missing == [], missing
    finally:
        producer.close()
        worker.stop()
        assert server.stop() == 0


async def test_two_servers_on_one_redis_count_each_event_once_in_all(make_redis):
    redis = make_redis()
    worker = start_worker(redis.url, "cmpair@cm-pair", concurrency=2, app=HOOKED)
    servers = [start_server(redis.url, name=f"server-celery-metrics-{n}") for n in (1, 2)]
    ports = [port for _, port in servers]
    producer = Celery("celery-metrics-pair", broker=redis.url, set_as_current=False)
    try:
        for port in ports:
            wait_for_first_poll(port)

        async def leaders() -> List[float]:
            return [(await scrape(port)).get(LEADER, 0) for port in ports]

        await eventually(leaders, lambda flags: sorted(flags) == [0, 1])
        before = [await scrape(port) for port in ports]

        expected = run_the_tasks(producer)

        async def summed() -> Dict[tuple, float]:
            total: Dict[tuple, float] = {}
            for port, earlier in zip(ports, before):
                now = await scrape(port)
                for sample, delta in moved(task_samples(earlier), task_samples(now)).items():
                    total[sample] = total.get(sample, 0) + delta
            return total

        await eventually(summed, lambda total: total == expected)
        scrapes = [await scrape(port) for port in ports]
        exporting = [any(sample[0] == "celery_worker_up" for sample in s) for s in scrapes]
        assert exporting == [s[LEADER] == 1 for s in scrapes]
    finally:
        producer.close()
        worker.stop()
        for child, _ in servers:
            assert child.stop() == 0


# -- the dashboard's PromQL -------------------------------------------------------------

SELECTOR = re.compile(r"\b(celery_\w+)\s*(?:\{([^}]*)\})?")
MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)")
BY = re.compile(r"\bby\s*\(([^)]*)\)")
LABEL_VALUES = re.compile(r"label_values\(\s*(celery_\w+)\s*,\s*(\w+)\s*\)")


def dashboard_queries() -> Iterator[str]:
    """Every PromQL expression the dashboard runs: panel targets and variables."""
    model = json.loads(DASHBOARD.read_text())
    for panel in model["panels"]:
        for target in panel.get("targets", ()):
            yield target["expr"]
    for variable in model["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            yield query["query"]


def series_referenced(expr: str) -> Set[Tuple[str, frozenset]]:
    """(metric, the labels it must carry) for each celery_* metric in `expr`: the
    labels of its own matchers, and of every `by (...)` of the expression."""
    variables = {(metric, frozenset({label})) for metric, label in LABEL_VALUES.findall(expr)}
    if variables:
        return variables
    grouped = {label.strip() for clause in BY.findall(expr) for label in clause.split(",")
               if label.strip()}
    return {(metric, frozenset(MATCHER.findall(matchers or "")) | grouped)
            for metric, matchers in SELECTOR.findall(expr)}


def dashboard_series_missing_from(samples: dict) -> List[str]:
    """Each metric and label set the dashboard queries that no sample has."""
    missing = []
    for expr in dashboard_queries():
        for metric, labels in series_referenced(expr):
            if not any(name == metric and labels <= {label for label, _ in sample_labels}
                       for name, sample_labels in samples):
                missing.append(f"{metric} with {sorted(labels)} (in {expr})")
    return missing


def test_the_dashboards_queries_are_read_as_their_metrics_and_labels():
    expr = ('histogram_quantile(0.95, sum by (name, le) '
            '(rate(celery_task_runtime_bucket{name=~"$task"}[$__rate_interval])))')
    assert series_referenced(expr) == {("celery_task_runtime_bucket",
                                        frozenset({"name", "le"}))}
    assert series_referenced('sum by (name, exception) (rate(celery_task_failed_total'
                             '{name=~"$task", exception!=""}[5m]))') == {
        ("celery_task_failed_total", frozenset({"name", "exception"}))}
    assert series_referenced("label_values(celery_task_started_total, name)") == {
        ("celery_task_started_total", frozenset({"name"}))}
    every = set().union(*(series_referenced(expr) for expr in dashboard_queries()))
    assert {metric for metric, _ in every} >= {
        "celery_task_succeeded_total", "celery_task_failed_total", "celery_task_runtime_bucket",
        "celery_worker_up", "celery_worker_tasks_active", "celery_queue_length"}
