"""`notify_asyncio_tasks`: the tasks not yet done on the loop that reads the metrics."""

import asyncio

from notify_server.metrics import Metrics, loop_task_count


def test_it_counts_the_running_loops_tasks_and_is_zero_off_the_loop():
    async def scene():
        gate = asyncio.Event()
        extra = [asyncio.ensure_future(gate.wait()) for _ in range(3)]
        await asyncio.sleep(0)
        during = loop_task_count()
        gate.set()
        await asyncio.gather(*extra)
        return during, loop_task_count()

    during, after = asyncio.run(scene())
    assert (during, after) == (4, 1)  # the three, and the one running `scene`
    assert loop_task_count() == 0


def test_the_gauge_is_exported():
    async def scrape():
        return Metrics(open_connections=lambda: 0).exposition().decode()

    assert "\nnotify_asyncio_tasks 1.0\n" in asyncio.run(scrape())
