"""Stream.get_batch and Stream.batches: many messages a wake-up, in order, cancel-safe, ended with the stream."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from async_ws_stream import StreamOverflow
from async_ws_stream.metrics import instrument
from async_ws_stream.testing import FeedServer

from .conftest import JsonClient, settle


async def buffered(client: JsonClient, server: FeedServer, count: int) -> None:
    """Connect, broadcast {"n": 0} .. {"n": count - 1}, and return once the client has dispatched them all."""
    await client.wait_connected(timeout=5)
    for n in range(count):
        await server.broadcast({"n": n})
    await settle(client, server)


async def test_get_batch_takes_what_is_buffered_up_to_most_in_order(client: JsonClient, server: FeedServer) -> None:
    """Ten buffered: a batch of four, then the other six; an empty stream waits for the next message."""
    stream = client.stream_filter([{"n": lambda v: True}])
    await buffered(client, server, 10)
    assert [m["n"] for m in await stream.get_batch(4)] == [0, 1, 2, 3]
    assert [m["n"] for m in await stream.get_batch()] == [4, 5, 6, 7, 8, 9]
    waiting = asyncio.ensure_future(stream.get_batch())
    await server.broadcast({"n": 10})
    assert [m["n"] for m in await asyncio.wait_for(waiting, 5)] == [10]


async def test_a_cancelled_get_batch_takes_nothing(client: JsonClient, server: FeedServer) -> None:
    """Cancelling a waiting get_batch loses no message: the next call returns it."""
    stream = client.stream_filter([{"n": lambda v: True}])
    await client.wait_connected(timeout=5)
    waiting = asyncio.ensure_future(stream.get_batch())
    await asyncio.sleep(0)  # one turn of the loop: the call is now waiting for a message
    assert not waiting.done()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await server.broadcast({"n": 1})
    await settle(client, server)
    assert [m["n"] for m in await stream.get_batch()] == [1]


async def test_batches_end_with_the_stream_after_its_buffer(server: FeedServer) -> None:
    """async for over batches() gets every message once, in order, then ends when the client exits."""
    client = JsonClient(server.url)
    stream = client.stream_filter([{"n": lambda v: True}])
    try:
        await buffered(client, server, 25)
    finally:
        await client.exit()
    sizes, got = [], []
    async for batch in stream.batches(10):
        sizes.append(len(batch))
        got += [m["n"] for m in batch]
    assert got == list(range(25)) and sizes == [10, 10, 5]
    with pytest.raises(EOFError):
        await stream.get_batch()


async def test_an_overflow_error_comes_after_the_buffered_batch(client: JsonClient, server: FeedServer) -> None:
    """Under overflow="error" the buffered messages are returned first, then StreamOverflow is raised."""
    stream = client.stream_filter([{"n": lambda v: True}], maxsize=3, overflow="error")
    await buffered(client, server, 5)
    assert [m["n"] for m in await stream.get_batch()] == [0, 1, 2]
    with pytest.raises(StreamOverflow):
        await stream.get_batch()


@pytest.mark.parametrize("most", [0, -1, 1.5, True, "10"])
async def test_a_bad_most_is_refused_by_name(client: JsonClient, most: Any) -> None:
    """most must be an int >= 1; the error names it and the value."""
    stream = client.stream_filter()
    with pytest.raises(ValueError, match=r"most must be an int >= 1.*got"):
        await stream.get_batch(most)
    with pytest.raises(ValueError, match="most must be an int >= 1"):
        stream.batches(most)


async def test_an_instrumented_stream_batches_plain_messages_and_times_each(server: FeedServer) -> None:
    """With metrics on, a batch still holds the messages (not their timestamps), and each one's wait is observed."""
    registry = CollectorRegistry()
    client = JsonClient(server.url)
    inst = instrument(client, registry=registry, name="batches")
    stream = client.stream_filter([{"n": lambda v: True}])
    try:
        await buffered(client, server, 7)
        batch = await stream.get_batch()
        lag = registry.get_sample_value("async_ws_stream_dequeue_lag_seconds_count", {"name": "batches"})
    finally:
        inst.close()
        await client.exit()
    assert [m["n"] for m in batch] == list(range(7))
    assert lag == 7
