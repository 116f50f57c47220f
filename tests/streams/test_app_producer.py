"""The worker's topics send without turning the event loop once the producer runs (``streams.app._Topic``): the
results of a batch chunk's files, finished together, then go to the broker in one produce request."""

from __future__ import annotations

import asyncio

from streams.app import create_app
from streams.settings import Settings


async def test_a_send_takes_no_turn_of_the_event_loop_once_the_producer_has_answered(tmp_path) -> None:
    app = create_app(Settings(data_dir=tmp_path), "127.0.0.1:9")  # never connects: no send goes out here
    topic = app.topic("damflow.assets")
    asked: list[bool] = []

    async def maybe_start_producer():  # faust's (a mode stampede) turns the loop even when the producer runs
        asked.append(True)
        await asyncio.sleep(0)
        app.producer._started.set()  # started (here, only said to be)
        return app.producer

    app.maybe_start_producer = maybe_start_producer
    assert await topic._get_producer() is app.producer  # the first send: faust's way, which starts it
    turned: list[bool] = []
    asyncio.get_running_loop().call_soon(turned.append, True)
    for _ in range(3):
        assert await topic._get_producer() is app.producer
    assert not turned  # nothing else ran in between: a chunk's sends all reach the producer before it sends
    assert asked == [True]
    app.producer._started.clear()  # restarted (mode clears the flag): faust's way again, which starts it
    assert await topic._get_producer() is app.producer
    assert asked == [True, True]
