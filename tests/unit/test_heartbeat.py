import asyncio

from notify_server.heartbeat import Heartbeat


class FakeSocket:
    """Answers pings (on the next loop turn) or stays silent; records what happened."""

    def __init__(self, answers: bool):
        self.answers, self.awaiting_pong, self.pings = answers, False, 0
        self.timed_out = asyncio.Event()
        self.pinged_three_times = asyncio.Event()

    def send_ping(self):
        self.pings += 1
        if self.pings == 3:
            self.pinged_three_times.set()
        if self.answers:
            asyncio.get_running_loop().call_soon(setattr, self, "awaiting_pong", False)

    def ping_timed_out(self):
        self.timed_out.set()


async def test_heartbeat_pings_every_interval_and_times_out_only_the_silent(io_loop):
    heartbeat = Heartbeat(interval=0.05, timeout=0.02)
    live, dead = FakeSocket(answers=True), FakeSocket(answers=False)
    heartbeat.add(live)
    heartbeat.add(dead)
    runner = asyncio.get_running_loop().create_task(heartbeat.run())

    await asyncio.wait_for(dead.timed_out.wait(), 5)
    heartbeat.discard(dead)
    await asyncio.wait_for(live.pinged_three_times.wait(), 5)
    runner.cancel()

    assert not live.timed_out.is_set() and dead.pings == 1
