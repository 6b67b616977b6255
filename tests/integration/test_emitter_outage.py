"""The worker-side emitter with Redis down: never fails, never hangs, loses nothing
within its bound, and writes the backlog in order once Redis is back."""

import orjson
import redis as redis_py

from notify_server.protocol import task_events
from notify_server.protocol.names import Keys
from notify_server.worker.emitter import Emitter
from tests.support.log_watch import watching


def test_emitter_buffers_through_an_outage_and_writes_in_order_when_redis_returns(make_redis):
    server = make_redis(appendonly=True)
    emitter = Emitter(server.url, buffer_size=5, retry_interval=0.2)
    emitter.emit(task_events.task_started("before", "A"))
    assert emitter.flush()
    server.kill()

    with watching("notify_server.worker.emitter") as log:
        emitter.emit(task_events.task_started("down-0", "A"))
        assert len(log.wait_for("cannot write")) == 1  # the writer found Redis gone
        for number in range(1, 8):
            emitter.emit(task_events.task_started(f"down-{number}", "A"))
        assert emitter.pending == 5 and emitter.dropped == 3
        assert not emitter.flush(0.5)

        server.start()
        client = redis_py.Redis.from_url(server.url)
        history, cursor = [], "0-0"
        while len(history) < 6:  # the background flusher writes them: block until it has
            reply = client.xread({Keys().history_stream: cursor}, block=10_000)
            assert reply, f"flusher wrote only {len(history)} of 6 events"
            history.extend(reply[0][1])
            cursor = history[-1][0]
        task_ids = [orjson.loads(fields[b"event"])["data"]["task_id"] for _, fields in history]
        assert task_ids == ["before"] + [f"down-{n}" for n in range(3, 8)]
        assert emitter.flush()
        assert "(3 dropped)" in log.wait_for("Redis is back")[0]
        assert len(log.matching("cannot write")) == 1  # one warning for the whole outage
        client.close()
