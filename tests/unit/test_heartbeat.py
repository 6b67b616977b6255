import asyncio

from notify_server.edge.heartbeat import Heartbeat


class FakeSocket:
    """Answers pings (on the next loop turn) or stays silent; records what happened."""

    def __init__(self, answers: bool):
        self.answers, self.awaiting_pong, self.pings = answers, False, 0
        self.timed_out = asyncio.Event()
        self.pinged_three_times = asyncio.Event()
        self.pinged = asyncio.Event()

    def send_ping(self):
        self.pings += 1
        self.pinged.set()
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


async def test_a_large_round_is_pinged_in_slices_with_other_work_in_between(io_loop):
    heartbeat = Heartbeat(interval=0.2, timeout=0.1)
    sockets = [FakeSocket(answers=True) for _ in range(600)]
    for sock in sockets:
        heartbeat.add(sock)
    pinged_when_other_work_ran = []

    def other_work():  # an event broadcast, say: runs whenever the loop is free
        pinged_when_other_work_ran.append(sum(sock.pings for sock in sockets))
        if not all(sock.pings for sock in sockets):
            asyncio.get_running_loop().call_later(0.001, other_work)

    runner = asyncio.get_running_loop().create_task(heartbeat.run())
    other_work()
    await asyncio.wait_for(asyncio.gather(*(sock.pinged.wait() for sock in sockets)), 5)
    runner.cancel()

    # Between the first ping and the last, other work ran with part of the round pinged.
    assert any(0 < count < len(sockets) for count in pinged_when_other_work_ran)
    assert all(sock.pings == 1 for sock in sockets)
