"""Bursts: thousands of frames in one socket read, and the buffers of the consumers they wake.

The pump parses a read to its end before the consumers it woke get to run, so
a burst could fill the buffer of a consumer that keeps up. It yields to a woken
consumer whose buffer is half full; a consumer busy elsewhere never makes it
yield. Each test holds the client's socket unread while the server sends, so
the whole burst waits in the socket and arrives in one read (picows: a few).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from async_ws_stream.testing import FeedServer

from .conftest import EVERY_TRANSPORT, JsonClient, hold_unread, settle, transports

pytestmark = pytest.mark.parametrize("transport", transports(*EVERY_TRANSPORT), indirect=True)

BURST = 2_000  # frames of about 10 bytes: 20 kB, one read
MAXSIZE = 100  # the burst is 20 times this


async def burst(client: JsonClient, server: FeedServer, n: int = BURST) -> None:
    """Send ``n`` frames ``{"n": i}`` while the client does not read, then let it read them at once."""
    await hold_unread(client.present_ws.transport, server, lambda: server.publish({"n": i} for i in range(n)))


async def collect(stream: Any, n: int) -> list[int]:
    return [(await anext(stream))["n"] for _ in range(n)]


async def test_a_burst_bigger_than_a_buffer_reaches_a_consumer_that_keeps_up(
    client: JsonClient, server: FeedServer
) -> None:
    """2,000 frames in one read, a 100-message buffer under overflow="error": nothing dropped, no overflow."""
    stream = client.stream_filter(maxsize=MAXSIZE)
    reader = asyncio.create_task(collect(stream, BURST))
    await client.wait_connected(timeout=5)
    await burst(client, server)
    assert await asyncio.wait_for(reader, 10) == list(range(BURST))
    stats = client.stats()
    assert stream.dropped == 0 and stats["dropped"] == 0
    # Woken at its first message, the consumer reaches 50 before it runs: the pump
    # yields once per 50 messages of the burst (a read that ends sooner needs none).
    assert BURST // (MAXSIZE // 2) - 5 <= stats["pump_yields"] <= BURST // (MAXSIZE // 2)


async def test_handlers_and_streams_share_the_yields(client: JsonClient, server: FeedServer) -> None:
    """An async handler with a small buffer, beside a stream with one, both get every frame of the burst."""
    handled: list[int] = []
    done = asyncio.Event()

    async def on_message(msg: Any) -> None:
        handled.append(msg["n"])
        if len(handled) == BURST:
            done.set()

    client.add_handler(on_message, maxsize=MAXSIZE)
    stream = client.stream_filter(maxsize=MAXSIZE)
    reader = asyncio.create_task(collect(stream, BURST))
    await client.wait_connected(timeout=5)
    await burst(client, server)
    assert await asyncio.wait_for(reader, 10) == list(range(BURST))
    await asyncio.wait_for(done.wait(), 10)
    assert handled == list(range(BURST))
    assert client.stats()["dropped"] == 0


async def test_a_consumer_busy_elsewhere_drops_and_does_not_slow_the_pump(
    client: JsonClient, server: FeedServer
) -> None:
    """A consumer awaiting something else is not woken, so its full buffer drops; the pump yields once, not per message."""
    release = asyncio.Event()
    slow_got: list[int] = []

    async def slow_reader(stream: Any) -> None:
        async for msg in stream:
            slow_got.append(msg["n"])
            await release.wait()  # busy elsewhere: not waiting on the stream

    slow = client.stream_filter(maxsize=10, overflow="drop_newest")
    fast = client.stream_filter()
    never_read = client.stream_filter(maxsize=10, overflow="drop_oldest")
    slow_task = asyncio.create_task(slow_reader(slow))
    fast_reader = asyncio.create_task(collect(fast, BURST))
    await client.wait_connected(timeout=5)
    try:
        await burst(client, server)
        assert await asyncio.wait_for(fast_reader, 10) == list(range(BURST))
        await settle(client, server, {"n": -1})
        # The slow consumer, woken by frame 0, asked for one yield when its buffer
        # reached 5 and then took frame 0; busy since, it kept 1..10 and dropped
        # the rest. A stream nobody reads never asks: it was never woken.
        assert slow_got == [0]
        assert [slow.get_nowait()["n"] for _ in range(slow.queued)] == list(range(1, 11))
        assert slow.dropped == BURST - 11 + 1  # and the settle marker
        assert never_read.dropped == BURST + 1 - 10
        assert client.stats()["pump_yields"] == 1
    finally:
        slow_task.cancel()
