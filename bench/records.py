"""Task records: what they cost a writer, what they weigh in Redis, how fast they are read.

Three parts, each on a redis-server of its own started here (the embedded one):

  emit     the emit step with records against without (the same script call,
           PREFIX "" keeps no record): per event, the round trip the worker's
           thread waits, the worker's CPU, and Redis's CPU (INFO cpu), for a
           lifecycle of 5 events (received, started, 2 progress, completed);
           alternating rounds.
  memory   used_memory per record after writing N records of 1,000 owners
           through the real script (pipelined), 5 events each, mixed outcomes.
  reads    with those records in Redis, a real server (token mode): p50/p99 of
           GET /api/tasks/<id>, of one user's list and of an admin's
           status=failed list, at 50 requests/s while 200 events/s flow, and a
           WebSocket client counting the events it receives.

    .venv/bin/python -m bench.records [--rounds 4] [--events 20000] [--records 100000]

Prints the figures and writes them to bench/out/records.json.
"""

import argparse
import asyncio
import json
import random
import resource
import statistics
import threading
import time
import uuid
from pathlib import Path
from typing import List

import redis
from tornado.httpclient import AsyncHTTPClient

from notify_server.dev.embedded_redis import EmbeddedRedis
from notify_server.protocol import task_events as ev
from notify_server.protocol.emit_script import EMIT_SCRIPT, record_arguments
from notify_server.protocol.names import Keys
from notify_server.protocol.task_events import encode_event
from tests.support.client import WsClient
from tests.support.processes import start_server
from tests.support.tokens import SECRET, sign

OUT = Path(__file__).resolve().parent / "out" / "records.json"
KEYS = Keys()
NAMES = ("tasks.download", "tasks.transcode", "tasks.report", "tasks.thumbnail")


def lifecycle(task_id: str, owner: str, name: str, outcome: str) -> List[tuple]:
    """(message, record extra) of one task's five events."""
    avid = f"AV-{task_id[:8]}"
    extra = {"attempt": 0, "name": name, "worker": "celery@bench"}
    end = (ev.task_failed(task_id, avid, "ValueError: boom") if outcome == "failed"
           else ev.task_completed(task_id, avid, f"{avid} done"))
    messages = [ev.task_received(task_id, avid, "celery@bench"), ev.task_started(task_id, avid),
                ev.task_progress(task_id, avid, 1, 2, "half"),
                ev.task_progress(task_id, avid, 2, 2, "all"), end]
    return [(ev.with_owner(message, owner), extra) for message in messages]


def script_args(message: dict, extra: dict, records: bool) -> list:
    pairs = record_arguments(message, {**extra, "time": time.time()}) if records else []
    return [encode_event(message), 10000, 600, KEYS.root if pairs else "", *pairs]


def redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def emit_round(client, script, events: int, records: bool) -> dict:
    keys = [KEYS.history_stream, KEYS.events_channel, ""]
    waits, cpu_before, redis_before = [], time.process_time(), redis_cpu(client)
    done = 0
    while done < events:
        for message, extra in lifecycle(uuid.uuid4().hex, f"u{done % 100}", NAMES[done % 4],
                                        "failed" if done % 10 == 0 else "success"):
            started = time.perf_counter()
            script(keys=keys, args=script_args(message, extra, records))
            waits.append((time.perf_counter() - started) * 1e6)
            done += 1
    return {"round_trip_p50_us": statistics.median(waits),
            "round_trip_p99_us": sorted(waits)[int(0.99 * len(waits))],
            "round_trip_mean_us": statistics.fmean(waits),
            "worker_cpu_us": (time.process_time() - cpu_before) / done * 1e6,
            "redis_cpu_us": (redis_cpu(client) - redis_before) / done * 1e6}


def bench_emit(rounds: int, events: int) -> dict:
    server = EmbeddedRedis()
    url = server.start()
    try:
        client = redis.Redis.from_url(url)
        script = client.register_script(EMIT_SCRIPT)
        emit_round(client, script, 2000, True)  # warm up
        runs = {"without": [], "with": []}
        for _ in range(rounds):
            for name in ("without", "with"):
                runs[name].append(emit_round(client, script, events, name == "with"))
        summary = {name: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
                   for name, rows in runs.items()}
        summary["ratio"] = {key: summary["with"][key] / summary["without"][key]
                            for key in summary["with"]}
        return {"rounds": runs, "summary": summary}
    finally:
        server.stop()


def fill(url: str, count: int, owners: int = 1000) -> List[dict]:
    """`count` records of `owners` owners through the real script, pipelined."""
    client = redis.Redis.from_url(url)
    script = client.register_script(EMIT_SCRIPT)
    keys = [KEYS.history_stream, KEYS.events_channel, ""]
    written, rng = [], random.Random(7)
    pipe = client.pipeline(transaction=False)
    for number in range(count):
        task_id, owner = str(uuid.UUID(int=rng.getrandbits(128))), f"user-{number % owners}"
        outcome = "failed" if rng.random() < 0.1 else "success"
        for message, extra in lifecycle(task_id, owner, NAMES[number % 4], outcome):
            script(keys=keys, args=script_args(message, extra, True), client=pipe)
        if number % 200 == 199:
            pipe.execute()
        written.append({"task_id": task_id, "owner": owner, "outcome": outcome})
    pipe.execute()
    return written


def bench_memory(url: str, count: int) -> dict:
    client = redis.Redis.from_url(url)
    client.hset(KEYS.records_config, mapping={"max": count * 2})
    before = client.info("memory")["used_memory"]
    started = time.monotonic()
    written = fill(url, count)
    seconds = time.monotonic() - started
    history = client.memory_usage(KEYS.history_stream) or 0
    after = client.info("memory")["used_memory"]
    records = client.zcard(KEYS.all_records)
    per_record = (after - before - history) / records
    return {"records": records, "used_memory_bytes": after - before,
            "history_stream_bytes": history, "bytes_per_record": per_record,
            "default_max_100000_mib": per_record * 100000 / 2 ** 20,
            "fill_seconds": seconds, "written": written}


async def bench_reads(url: str, written: List[dict], seconds: float) -> dict:
    server, port = start_server(url, env={"NOTIFY_AUTH_SECRET": SECRET,
                                          "NOTIFY_TASK_MAX": str(len(written) * 2)},
                                name="bench-records")
    http = AsyncHTTPClient(max_clients=20)
    admin = sign("bench-admin", ttl=3600, admin=True)
    watcher = await WsClient.connect(port, f"token={admin}")
    timings = {"get": [], "user_list": [], "failed_list": []}
    stop = threading.Event()
    emitted = [0]

    def emit_forever():
        from notify_server.worker.emitter import Emitter
        emitter = Emitter(url)
        next_at = time.monotonic()
        while not stop.is_set():
            for message, extra in lifecycle(uuid.uuid4().hex, "user-0", NAMES[0], "success"):
                emitter.emit(message, record=extra)
                emitted[0] += 1
                next_at += 1 / 200
                time.sleep(max(0.0, next_at - time.monotonic()))
    publisher = threading.Thread(target=emit_forever, daemon=True)
    publisher.start()
    rng = random.Random(11)

    async def one(kind: str) -> None:
        sample = rng.choice(written)
        if kind == "get":
            path, token = f"/api/tasks/{sample['task_id']}", admin
        elif kind == "user_list":
            path, token = "/api/tasks?limit=50", sign(sample["owner"], ttl=3600,
                                                      owners=[sample["owner"]])
        else:
            path, token = "/api/tasks?status=failed&limit=50", admin
        started = time.perf_counter()
        response = await http.fetch(f"http://127.0.0.1:{port}{path}",
                                    headers={"Authorization": f"Bearer {token}"})
        timings[kind].append((time.perf_counter() - started) * 1000)
        assert response.code == 200
    try:
        kinds, pending = ("get", "user_list", "failed_list"), []
        started = time.monotonic()
        count = 0
        while time.monotonic() - started < seconds:
            pending.append(asyncio.ensure_future(one(kinds[count % 3])))
            count += 1
            await asyncio.sleep(max(0.0, started + count / 50 - time.monotonic()))
        await asyncio.gather(*pending)
    finally:
        stop.set()
        publisher.join(timeout=10)
        server.stop()
    try:
        while await watcher.next(timeout=5.0) is not None:  # what the socket was sent
            pass
    except asyncio.TimeoutError:
        pass
    received = sum(1 for m in watcher.received if m["type"].startswith("task_"))
    watcher.close()
    return {kind: {"requests": len(values), "p50_ms": statistics.median(values),
                   "p99_ms": sorted(values)[int(0.99 * len(values))]}
            for kind, values in timings.items()} | {
        "events_emitted": emitted[0], "events_received_by_a_socket": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--records", type=int, default=100000)
    parser.add_argument("--seconds", type=float, default=60.0)
    options = parser.parse_args()
    results = {"emit": bench_emit(options.rounds, options.events)}
    emit = results["emit"]["summary"]
    for name in ("without", "with"):
        row = emit[name]
        print(f"emit {name:7} records: round trip p50 {row['round_trip_p50_us']:.0f} us "
              f"(mean {row['round_trip_mean_us']:.0f}), worker CPU {row['worker_cpu_us']:.0f} us, "
              f"Redis CPU {row['redis_cpu_us']:.1f} us per event")
    print("with/without: " + ", ".join(f"{k} {v:.2f}" for k, v in emit["ratio"].items()))
    server = EmbeddedRedis()
    url = server.start()
    try:
        memory = bench_memory(url, options.records)
        written = memory.pop("written")
        print(f"memory: {memory['records']} records in {memory['fill_seconds']:.0f} s, "
              f"{memory['bytes_per_record']:.0f} bytes per record (history stream excluded), "
              f"{memory['default_max_100000_mib']:.1f} MiB at the default maximum of 100,000")
        results["memory"] = memory
        reads = asyncio.run(bench_reads(url, written, options.seconds))
        results["reads"] = reads
        for kind in ("get", "user_list", "failed_list"):
            row = reads[kind]
            print(f"reads {kind:11}: {row['requests']} requests, p50 {row['p50_ms']:.1f} ms, "
                  f"p99 {row['p99_ms']:.1f} ms")
        print(f"while {reads['events_emitted']} events were emitted; a socket received "
              f"{reads['events_received_by_a_socket']}")
    finally:
        server.stop()
    results["max_rss_kb_bench"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
