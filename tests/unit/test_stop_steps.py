"""Each step of the server's stop is bounded and named when it overruns."""

import asyncio
import logging

from notify_server.server import _bounded


def test_a_step_that_overruns_is_named_and_left_behind(caplog):
    caplog.set_level(logging.WARNING, logger="notify_server.server")

    async def stop():
        await _bounded("waiting for a helper", asyncio.sleep(60), bound=0.05)
        await _bounded("a step that fails", _fail())
        await _bounded("a quick step", asyncio.sleep(0))
        return "ended"

    async def _fail():
        raise RuntimeError("bug")

    assert asyncio.run(stop()) == "ended"
    messages = [record.getMessage() for record in caplog.records]
    assert messages[0] == ("shutting down: waiting for a helper took more than 0.1 s; "
                           "going on without it")
    assert messages[1].startswith("shutting down: a step that fails failed")
    assert len(messages) == 2
