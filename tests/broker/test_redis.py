"""RedisStreamSink and RedisStreamSource against a real redis-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from async_ws_stream.broker import (
    BrokerConfigError,
    BrokerUnavailable,
    RedisStreamSink,
    RedisStreamSource,
)
from async_ws_stream.testing import FeedServer

from .conftest import FeedClient, trades
from .faults import eventually, settle
from .servers import RedisServer, free_port


async def read(stream: Any, n: int) -> list[Any]:
    out = []
    async with asyncio.timeout(10):
        async for msg in stream:
            out.append(msg)
            if len(out) == n:
                break
    return out


async def xadd_all(url: str, key: str, messages: list[Any]) -> None:
    r = aioredis.from_url(url)
    try:
        for i, msg in enumerate(messages):
            await r.xadd(key, {"d": json.dumps(msg), "i": f"id{i}"})
    finally:
        await r.aclose()


async def test_sink_writes_each_matching_message_to_its_key(
    redis_server: RedisServer, feed: FeedServer, feed_client: FeedClient
) -> None:
    """Trades land on md:<e>:<s> in order; what the filter excludes does not."""
    async with RedisStreamSink(feed_client, url=redis_server.url, key="md:{e}:{s}", filters=[{"e": "trade"}]) as sink:
        await feed_client.wait_connected(5)
        await feed.publish([*trades(50), {"e": "depth", "s": "BTCUSDT"}, *trades(50, 50, "ETHUSDT")])
        async with RedisStreamSource(url=redis_server.url, key="md:trade:ETHUSDT") as source:
            got = await read(source.stream_filter(), 50)
    assert [m["t"] for m in got] == list(range(50, 100))
    assert sink.stats()["published"] == 100
    r = aioredis.from_url(redis_server.url)
    assert await r.xlen("md:trade:BTCUSDT") == 50
    await r.aclose()


async def test_group_consumer_resumes_with_its_own_pending_entries(redis_server: RedisServer) -> None:
    """A group consumer reads 40 of 100 and closes; restarted under its name it goes on at the 41st."""
    await xadd_all(redis_server.url, "md", trades(100))
    options: dict[str, Any] = {"url": redis_server.url, "key": "md", "group": "bots", "consumer": "bot-1"}
    async with RedisStreamSource(**options) as source:
        first = await read(source.stream_filter(), 40)
    async with RedisStreamSource(**options) as source:
        rest = await read(source.stream_filter(), 60)
        await eventually(lambda: source.stats()["acked"] == 60, what="acks of what was read")
    assert [m["t"] for m in first] == list(range(40))
    assert [m["t"] for m in rest] == list(range(40, 100))
    r = aioredis.from_url(redis_server.url)
    assert (await r.xpending("md", "bots"))["pending"] == 0
    await r.aclose()


async def test_pending_entries_of_a_dead_consumer_are_claimed(redis_server: RedisServer) -> None:
    """Consumer a takes 100 entries and reads 40; consumer b claims the other 60 after claim_idle."""
    await xadd_all(redis_server.url, "md", trades(100))
    async with RedisStreamSource(url=redis_server.url, key="md", group="g", consumer="a") as a:
        first = await read(a.stream_filter(), 40)
    async with RedisStreamSource(url=redis_server.url, key="md", group="g", consumer="b", claim_idle=0.2) as b:
        rest = await read(b.stream_filter(), 60)
        assert b.stats()["claimed"] == 60
    assert [m["t"] for m in first] == list(range(40))
    assert [m["t"] for m in rest] == list(range(40, 100))


async def test_dedup_window_keeps_one_entry_per_id(
    redis_server: RedisServer, feed: FeedServer, feed_client: FeedClient
) -> None:
    """Two sinks of one client (two collectors' worth of copies) with dedup_window: each message once."""
    options: dict[str, Any] = {"url": redis_server.url, "key": "md", "dedup_window": 60}
    async with RedisStreamSink(feed_client, **options), RedisStreamSink(feed_client, **options) as second:
        await feed_client.wait_connected(5)
        await feed.publish(trades(200))
        await eventually(lambda: second.stats()["published"] == 200, what="200 published")
    r = aioredis.from_url(redis_server.url)
    try:
        assert await r.xlen("md") == 200
    finally:
        await r.aclose()


async def test_source_skips_repeated_ids(redis_server: RedisServer, feed: FeedServer, feed_client: FeedClient) -> None:
    """Without dedup in Redis, the stream holds both copies and the source delivers one, counting the other."""
    async with RedisStreamSink(feed_client, url=redis_server.url, key="md"), \
            RedisStreamSink(feed_client, url=redis_server.url, key="md"):
        await feed_client.wait_connected(5)
        await feed.publish(trades(100))
        async with RedisStreamSource(url=redis_server.url, key="md") as source:
            got = await read(source.stream_filter(), 100)
            await eventually(lambda: source.stats()["received"] == 200, what="both copies read")
            assert source.stats()["duplicates"] == 100
    assert sorted(m["t"] for m in got) == list(range(100))


async def test_redis_killed_and_restarted_mid_run(
    redis_server: RedisServer, feed: FeedServer, feed_client: FeedClient
) -> None:
    """With redis-server down the feed streams on and drops are counted; after the restart the sink
    writes again, a gap marker first."""
    async with RedisStreamSink(feed_client, url=redis_server.url, key="md", maxsize=100, batch=20,
                               ack_timeout=0.3, backoff_max=0.1, connect_timeout=0.5) as sink:
        await feed_client.wait_connected(5)
        redis_server.kill()
        await feed.publish(trades(500))
        await settle(feed_client, feed)
        assert sink.stats()["dropped"] > 0 and sink.stats()["queued"] <= 100
        await redis_server.start()  # an empty server: it keeps nothing on disk
        await feed.publish(trades(50, 500))
        async with RedisStreamSource(url=redis_server.url, key="md") as source:
            got: list[Any] = []
            async with asyncio.timeout(10):
                async for msg in source.stream_filter():
                    got.append(msg)
                    if msg.get("t") == 549:
                        break
    markers = [m["_gap"] for m in got if "_gap" in m]
    assert markers and markers[0]["dropped"] >= 1
    assert [m["t"] for m in got if "t" in m][-50:] == list(range(500, 550))
    assert sink.stats()["reconnects"] >= 1


async def test_unreachable_redis_fails_naming_the_address(feed_client: FeedClient) -> None:
    """No server on the port: BrokerUnavailable with the address."""
    url = f"redis://127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnavailable, match=r"cannot connect to Redis redis://127\.0\.0\.1:\d+"):
        async with RedisStreamSink(feed_client, url=url, key="md", connect_timeout=0.5):
            pass
    with pytest.raises(BrokerUnavailable, match="cannot connect to Redis"):
        async with RedisStreamSource(url=url, key="md", connect_timeout=0.5):
            pass


async def test_wrong_redis_password_fails_naming_the_credentials(tmp_path: Path, feed_client: FeedClient) -> None:
    """A server with requirepass: BrokerConfigError about the password, which is not shown."""
    server = RedisServer(tmp_path)
    server.argv += ["--requirepass", "right"]
    await server.start()
    try:
        for url in (f"redis://:wrong@127.0.0.1:{server.port}", f"redis://127.0.0.1:{server.port}"):
            with pytest.raises(BrokerConfigError, match="credentials|password") as caught:
                async with RedisStreamSink(feed_client, url=url, key="md"):
                    pass
            assert "wrong" not in str(caught.value)
    finally:
        server.stop()
