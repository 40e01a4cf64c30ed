"""Slow consumers next to fast ones under a flood: policies apply, the fast lose nothing, keepalive lives."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from websockets.asyncio.client import connect

from async_ws_stream import StreamOverflow
from async_ws_stream.testing import FeedServer
from async_ws_stream.transports import DEFAULT_READ_SIZE, picows_connect

from .conftest import JsonClient, settle

N = 20_000
SLOW = 50  # buffer of every slow consumer
PING = 0.05  # both sides ping this often
PING_TIMEOUT = 1.0  # a pong this late kills the connection; the flood lasts longer


class Pinging(JsonClient):
    """A client that pings every 50 ms and drops the connection if a pong is a second late."""

    async def _create_ws(self) -> Any:
        options: dict[str, Any] = dict(open_timeout=2, close_timeout=1, ping_interval=PING, ping_timeout=PING_TIMEOUT)
        if self.transport == "picows":
            return await picows_connect(self.url, **options)
        return await connect(self.url, **options)


@pytest.fixture
async def feed() -> AsyncIterator[FeedServer]:
    async with FeedServer(ping_interval=PING) as server:
        yield server


def trade(seq: int) -> dict[str, Any]:
    return {"k": "t", "seq": seq, "pad": "x" * 100}


def big(seq: int) -> dict[str, Any]:
    return {"k": "t", "seq": seq, "pad": "x" * 2000}


async def test_slow_consumers_drop_while_fast_ones_get_everything(feed: FeedServer) -> None:
    """Under 20,000 messages, never-read streams apply their policy; the fast ones get all, in order."""
    client = Pinging(feed.url)
    trades: list[Mapping[str, Any]] = [{"k": "t"}]
    try:
        fast_seen = 0
        handled = 0

        async def fast_reader(stream: Any) -> None:
            nonlocal fast_seen
            async for msg in stream:
                assert msg["seq"] == fast_seen, "out of order or lost"
                fast_seen += 1
                if fast_seen == N:
                    return

        all_handled = asyncio.Event()

        async def fast_handler(msg: Any) -> None:
            nonlocal handled
            assert msg["seq"] == handled
            handled += 1
            if handled == N:
                all_handled.set()

        stuck = asyncio.Event()

        async def stuck_handler(msg: Any) -> None:
            await stuck.wait()

        fast = client.stream_filter(trades)
        client.add_handler(fast_handler, trades)
        client.add_handler(stuck_handler, trades, maxsize=SLOW, overflow="drop_oldest")
        oldest = client.stream_filter(trades, maxsize=SLOW, overflow="drop_oldest")
        newest = client.stream_filter(trades, maxsize=SLOW, overflow="drop_newest")
        failing = client.stream_filter(trades, maxsize=SLOW, overflow="error")
        reader = asyncio.create_task(fast_reader(fast))
        await client.wait_connected(timeout=5)

        latencies = set()
        for chunk in range(0, N, N // 10):
            await feed.publish(trade(seq) for seq in range(chunk, chunk + N // 10))
            latencies.add(feed.connections[0].latency)
        await settle(client, feed)
        await asyncio.wait_for(reader, 10)
        await asyncio.wait_for(all_handled.wait(), 10)

        assert fast_seen == N and handled == N and fast.dropped == 0
        assert [oldest.get_nowait()["seq"] for _ in range(oldest.queued)] == list(range(N - SLOW, N))
        assert oldest.dropped == N - SLOW
        assert [newest.get_nowait()["seq"] for _ in range(newest.queued)] == list(range(SLOW))
        assert newest.dropped == N - SLOW
        assert [(await anext(failing))["seq"] for _ in range(SLOW)] == list(range(SLOW))
        with pytest.raises(StreamOverflow):
            await anext(failing)
        stats = client.stats()
        # The stuck handler holds one message and buffers SLOW more; it dropped the rest.
        stuck_dropped = N - SLOW - 1
        assert stats["dropped"] == (N - SLOW) * 2 + 1 + stuck_dropped
        # The client's pong timeout never fired, and the server's pings kept
        # being answered all through the flood, each with a fresh round-trip time.
        assert stats["connects"] == 1 and stats["reconnects"] == 0, "the flood cost the connection"
        assert len(latencies - {0}) > 1
    finally:
        await client.exit()


async def test_memory_stays_bounded_with_a_consumer_that_never_reads(feed: FeedServer, transport: str) -> None:
    """Traced memory after 10,000 messages is within 2 MB (plus picows' read buffer) of what it was after 5,000.

    picows' own receive buffer may still grow towards its read_size (4 MiB, the bound
    the README gives for it) in the measured burst, depending on how reads fall: that
    growth is bounded, and allowed. Unbounded stream buffers would add 10 MB.
    """
    client = JsonClient(feed.url)
    tracemalloc.start()
    try:
        # Held, unread: a stream nobody references would be closed as abandoned.
        held = [client.stream_filter(maxsize=100, overflow=policy)  # type: ignore[arg-type]
                for policy in ("drop_oldest", "drop_newest")]
        client.add_handler(lambda msg: None)
        await client.wait_connected(timeout=5)
        await feed.publish(big(i) for i in range(5_000))
        await settle(client, feed)
        warm, _ = tracemalloc.get_traced_memory()
        await feed.publish(big(i) for i in range(5_000))
        await settle(client, feed)
        hot, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await client.exit()
    # Unbounded buffers would hold 5,000 more messages of over 2 KB: 10 MB.
    allowed = 2_000_000 + (DEFAULT_READ_SIZE if transport == "picows" else 0)
    assert hot - warm < allowed, f"grew {hot - warm} bytes"
    assert client.stats()["dropped"] == 2 * (10_000 + 2 - 100)  # the two settle markers too
    assert all(stream.dropped == 10_000 + 2 - 100 for stream in held)
