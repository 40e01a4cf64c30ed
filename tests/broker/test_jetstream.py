"""JetStreamSink and JetStreamSource against a real nats-server."""

from __future__ import annotations

import asyncio
from typing import Any

import nats
import pytest

from async_ws_stream.broker import (
    BrokerConfigError,
    BrokerUnavailable,
    JetStreamSink,
    JetStreamSource,
    ensure_stream,
)
from async_ws_stream.testing import FeedServer

from .conftest import FeedClient, trades
from .servers import NatsServer, free_port


async def stream_count(url: str, stream: str = "MD") -> int:
    nc = await nats.connect(url)
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


async def read(source_stream: Any, n: int) -> list[Any]:
    out = []
    async with asyncio.timeout(10):
        async for msg in source_stream:
            out.append(msg)
            if len(out) == n:
                break
    return out


async def test_sink_publishes_every_matching_message_to_its_subject(
    nats_server: NatsServer, feed: FeedServer, feed_client: FeedClient
) -> None:
    """Every trade lands once on md.<e>.<s>; a non-matching message is not published."""
    await ensure_stream(servers=nats_server.url, stream="MD", subjects=["md.>"])
    async with JetStreamSink(feed_client, servers=nats_server.url, stream="MD", subject="md.{e}.{s}",
                             filters=[{"e": "trade"}]) as sink:
        await feed_client.wait_connected(5)
        await feed.publish([*trades(50), {"e": "depth", "s": "BTCUSDT"}, *trades(50, 50, "ETHUSDT")])
        async with JetStreamSource(servers=nats_server.url, stream="MD", subjects="md.trade.ETHUSDT") as source:
            eth = source.stream_filter()
            got = await read(eth, 50)
    assert [m["t"] for m in got] == list(range(50, 100))
    assert sink.stats()["published"] == 100
    assert await stream_count(nats_server.url) == 100
